// The native SentencePiece tokenizer (tokenizer/internal/sentencepiece_tokenizer.h) against
// Debian's libsentencepiece (tests/testing/sentencepiece_reference.h): identical ids and identical
// decoded text, on the shipped default model (models/ttt-brown/tokenizer.model) and on models
// trained here with spm_train (unigram with nmt_nfkc and byte fallback, as the default model;
// BPE with a user-defined piece; unigram without byte fallback, with identity normalization
// and extra whitespace kept), over the repository's own prose and thousands of random Unicode
// lines.
#include "tests/testing/sentencepiece_reference.h"

#include <stdlib.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tokenizer/tokenizer.h"

#include "tests/testing/utf8.h"

namespace ttt::tokenizer {
namespace {

namespace fs = std::filesystem;
using reference::SentencePieceReference;

const fs::path kSourceDir = TTT_SOURCE_DIR;

using ::ttt::testing::AppendUtf8;

std::string ReadFileOrEmpty(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// The repository's prose: README.md and docs/*.md, line by line and as whole files.
std::vector<std::string> RepositoryText() {
  std::vector<fs::path> files = {kSourceDir / "README.md"};
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(kSourceDir / "docs", ec)) {
    if (entry.path().extension() == ".md") files.push_back(entry.path());
  }
  std::vector<std::string> texts;
  for (const fs::path& file : files) {
    const std::string contents = ReadFileOrEmpty(file);
    texts.push_back(contents);
    for (std::string& line : Lines(contents)) texts.push_back(std::move(line));
  }
  return texts;
}

// Random text that stresses normalization: ASCII words, runs of spaces, tabs and newlines,
// control characters, full-width forms, ligatures, accented and combining letters, CJK,
// Hangul, emoji, "▁" itself, no-break and ideographic spaces, zero-width characters, Arabic,
// Devanagari, circled and superscript digits, and anything else in the BMP and beyond.
std::string RandomUnicodeLine(std::mt19937& rng) {
  static const std::vector<std::pair<char32_t, char32_t>> kRanges = {
      {0x20, 0x7E},       {0x20, 0x20},       {0x09, 0x0D},       {0x00, 0x1F},
      {0x7F, 0x9F},       {0xA0, 0xFF},       {0xC0, 0x17F},      {0x300, 0x36F},
      {0x370, 0x3FF},     {0x400, 0x4FF},     {0x600, 0x6FF},     {0x900, 0x97F},
      {0x1100, 0x11FF},   {0x2000, 0x206F},   {0x2070, 0x209F},   {0x2100, 0x218F},
      {0x2460, 0x24FF},   {0x2580, 0x2582},   {0x3000, 0x303F},   {0x3040, 0x30FF},
      {0x3200, 0x33FF},   {0x4E00, 0x9FFF},   {0xAC00, 0xD7A3},   {0xF900, 0xFAFF},
      {0xFB00, 0xFB4F},   {0xFE30, 0xFE4F},   {0xFE50, 0xFE6F},   {0xFEFF, 0xFEFF},
      {0xFF00, 0xFFEF},   {0xFFF0, 0xFFFD},   {0x1D400, 0x1D7FF}, {0x1F300, 0x1F64F},
      {0x1F900, 0x1F9FF}, {0xE0000, 0xE007F}, {0x10000, 0x10FFFF}};
  static const std::vector<std::string> kWords = {
      "the",   "model",      "reads",  "and",    "of",      "to",     "in",   "a",
      "was",   "he",         "that",   "is",     "serving", "tokens", "ﬁnal", "café",
      "naïve", "Ｈｅｌｌｏ", "１２３", "日本語", "한국어",  "😀",      "x²",   "①",
      "Å",     "ℌ",          "ｶﾀｶﾅ",   "…",      "™",       "½",      "ǅ",    "ﬀ"};
  std::string text;
  const int pieces = 1 + rng() % 24;
  for (int i = 0; i < pieces; ++i) {
    switch (rng() % 4) {
      case 0:
      case 1:
        text += kWords[rng() % kWords.size()];
        break;
      case 2:
        text += std::string(1 + rng() % 4, rng() % 3 == 0 ? '\t' : ' ');
        break;
      default: {
        const auto& [lo, hi] = kRanges[rng() % kRanges.size()];
        const int chars = 1 + rng() % 4;
        for (int c = 0; c < chars; ++c) {
          char32_t cp = lo + rng() % (hi - lo + 1);
          if (cp >= 0xD800 && cp <= 0xDFFF) cp = 0xFFFD;  // no surrogates in UTF-8
          text = AppendUtf8(text, cp);
        }
      }
    }
  }
  return text;
}

std::vector<std::string> TestTexts() {
  std::vector<std::string> texts = RepositoryText();
  for (const char* fixed : {"",
                            " ",
                            "   ",
                            "\t\n",
                            "hello",
                            " hello",
                            "hello ",
                            "  hello   world  ",
                            "ﬁ ﬂ ﬃ",
                            "Ｈｅｌｌｏ　Ｗｏｒｌｄ！",
                            "é é",
                            "①②③ ㍿ ㈱",
                            "\x01\x02 \x7F",
                            "a\u200Bb\uFEFFc",
                            "\u2581\u2581x \u2581",
                            "日本語のテキスト",
                            "😀👍🏽👨‍👩‍👧",
                            "<s> </s> <unk> <pad>",
                            "<0x41>",
                            "123456789",
                            "x\u00A0y\u3000z",
                            "A\u030A \u00C5"}) {
    texts.push_back(fixed);
  }
  std::mt19937 rng(2024);
  for (int i = 0; i < 5000; ++i) texts.push_back(RandomUnicodeLine(rng));
  return texts;
}

std::string StreamDecode(const Tokenizer& tokenizer, const std::vector<int32_t>& ids) {
  StreamDecoder decoder(tokenizer);
  std::string text;
  for (int32_t id : ids) text += decoder.Push(id);
  return text + decoder.Flush();
}

// Removes a directory tree when it goes out of scope.
struct ScopedRemove {
  ~ScopedRemove() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  fs::path path;
};

// Loads `model_path` both ways and compares them on TestTexts() and on random id sequences.
void ExpectMatchesLibrary(const fs::path& model_path) {
  std::string error;
  std::unique_ptr<SentencePieceReference> reference =
      SentencePieceReference::Load(model_path.string(), &error);
  ASSERT_NE(reference, nullptr) << error;
  const fs::path dir =
      fs::path(::testing::TempDir()) /
      absl::StrCat("spm_ref_", getpid(), "_", model_path.parent_path().filename().string());
  fs::create_directories(dir);
  const ScopedRemove remove_dir{dir};
  fs::copy_file(model_path, dir / "tokenizer.model", fs::copy_options::overwrite_existing);
  absl::StatusOr<std::unique_ptr<Tokenizer>> loaded = Tokenizer::Load(dir);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const Tokenizer& tokenizer = **loaded;

  ASSERT_EQ(tokenizer.vocab_size(), reference->piece_size());
  EXPECT_EQ(tokenizer.bos_id().value_or(-1), reference->bos_id());
  EXPECT_EQ(tokenizer.eos_id().value_or(-1), reference->eos_id());

  int mismatches = 0;
  for (const std::string& text : TestTexts()) {
    std::vector<int> expected;
    ASSERT_TRUE(reference->Encode(text, &expected, &error)) << error;
    absl::StatusOr<std::vector<int32_t>> ids = tokenizer.Encode(text);
    ASSERT_TRUE(ids.ok()) << ids.status();
    const std::vector<int32_t> want(expected.begin(), expected.end());
    if (*ids != want) {
      ADD_FAILURE() << model_path << ": encode differs for \"" << text.substr(0, 200)
                    << "\"\n  got  " << ::testing::PrintToString(*ids).substr(0, 300) << "\n  want "
                    << ::testing::PrintToString(want).substr(0, 300);
      if (++mismatches > 10) return;
      continue;
    }
    const std::string decoded = reference->Decode(expected);
    EXPECT_EQ(tokenizer.Decode(*ids), decoded) << text;
    EXPECT_EQ(StreamDecode(tokenizer, *ids), decoded) << text;
  }

  // Arbitrary id sequences (control, unknown and byte pieces anywhere, byte runs that are not
  // valid UTF-8) decode identically too.
  std::mt19937 rng(5);
  for (int i = 0; i < 2000; ++i) {
    std::vector<int> ids(rng() % 12);
    for (int& id : ids) {
      id = rng() % 3 == 0   ? static_cast<int>(rng() % 8)  // the special ids
           : rng() % 2 == 0 ? static_cast<int>(rng() % std::min(reference->piece_size(), 300))
                            : static_cast<int>(rng() % reference->piece_size());
    }
    const std::vector<int32_t> ids32(ids.begin(), ids.end());
    EXPECT_EQ(tokenizer.Decode(ids32), reference->Decode(ids)) << ::testing::PrintToString(ids);
  }
}

// Trains a model with spm_train on the repository's prose and a few random lines; returns its
// path.
fs::path TrainModel(const std::string& name, const std::string& flags) {
  const fs::path dir =
      fs::path(::testing::TempDir()) / absl::StrCat("spm_train_", getpid(), "_", name);
  fs::create_directories(dir);
  std::string corpus;
  for (const std::string& line : RepositoryText()) corpus += line + "\n";
  std::mt19937 rng(11);
  for (int i = 0; i < 40; ++i) corpus += RandomUnicodeLine(rng) + "\n";
  {
    std::ofstream out(dir / "corpus.txt", std::ios::binary);
    out << corpus;
  }
  const std::string spm_train = TTT_SPM_TRAIN;
  EXPECT_FALSE(spm_train.empty()) << "spm_train not found: run deploy/install-deps.sh";
  const std::string command =
      absl::StrCat(spm_train, " --input=", (dir / "corpus.txt").string(),
                   " --model_prefix=", (dir / "spm").string(), " ", flags, " --minloglevel=2 > ",
                   (dir / "spm_train.log").string(), " 2>&1");
  EXPECT_EQ(std::system(command.c_str()), 0) << command;
  return dir / "spm.model";
}

TEST(SentencePieceReferenceTest, ShippedDefaultModelMatchesLibrary) {
  ExpectMatchesLibrary(kSourceDir / "models/ttt-brown/tokenizer.model");
}

TEST(SentencePieceReferenceTest, UnigramNfkcByteFallbackModelMatchesLibrary) {
  const fs::path model = TrainModel("unigram",
                                    "--model_type=unigram --vocab_size=1000 --byte_fallback=true "
                                    "--character_coverage=0.995 --hard_vocab_limit=false "
                                    "--unk_id=0 --bos_id=1 --eos_id=2 --pad_id=3");
  const ScopedRemove remove_model{model.parent_path()};
  ExpectMatchesLibrary(model);
}

TEST(SentencePieceReferenceTest, BpeWithUserDefinedSymbolMatchesLibrary) {
  const fs::path model = TrainModel(
      "bpe",
      "--model_type=bpe --vocab_size=1000 --byte_fallback=true --character_coverage=0.995 "
      "'--user_defined_symbols=<sep>,ﬁn' --hard_vocab_limit=false");
  const ScopedRemove remove_model{model.parent_path()};
  ExpectMatchesLibrary(model);
}

TEST(SentencePieceReferenceTest, UnigramIdentityWithoutByteFallbackMatchesLibrary) {
  const fs::path model =
      TrainModel("identity",
                 "--model_type=unigram --vocab_size=1000 --character_coverage=0.98 "
                 "--normalization_rule_name=identity --remove_extra_whitespaces=false "
                 "--hard_vocab_limit=false");
  const ScopedRemove remove_model{model.parent_path()};
  ExpectMatchesLibrary(model);
}

TEST(SentencePieceReferenceTest, WordAndCharModelsMatchLibrary) {
  for (const char* type : {"word", "char"}) {
    SCOPED_TRACE(type);
    const fs::path model =
        TrainModel(type, absl::StrCat("--model_type=", type,
                                      " --vocab_size=400 "
                                      "--character_coverage=0.98 --hard_vocab_limit=false "
                                      "--use_all_vocab=false"));
    const ScopedRemove remove_model{model.parent_path()};
    ExpectMatchesLibrary(model);
  }
}

}  // namespace
}  // namespace ttt::tokenizer
