// Tokenizer encode speed (issue 29), each row against a baseline measured in the same run:
// - the real Qwen3 vocabulary with its NFC normalizer against the same file with the normalizer
//   removed (the work the server did before issue 29, when NFC was accepted and ignored);
// - the real Llama 3 vocabulary encoding special tokens as text (the server's default since
//   issue 29) against parsing them (Hugging Face's default);
// - the shipped model's SentencePiece tokenizer against Debian's libsentencepiece on the same file.
// Texts: the repository's docs (English prose and code) and the parity corpus of
// tests/data/tokenizer_parity (40+ scripts, emoji, digit and white-space runs), each repeated to
// 1 MiB. Prints tokens/s and MB/s (best of --reps runs); asserts nothing on time.
//   tokenizer_bench [--reps=5] [--data=/var/cache/ttt-serve/tokenizers]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "tests/testing/sentencepiece_reference.h"
#include "tokenizer/tokenizer.h"

namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;
using ttt::tokenizer::SpecialTokens;
using ttt::tokenizer::Tokenizer;

constexpr size_t kTextBytes = size_t{1} << 20;

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// `seed` repeated (whole pieces) up to kTextBytes.
std::string RepeatTo1MiB(const std::string& seed) {
  std::string text;
  while (text.size() + seed.size() <= kTextBytes) text += seed;
  return text;
}

std::string DocsText() {
  std::string seed;
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(fs::path(TTT_SOURCE_DIR) / "docs")) {
    if (entry.path().extension() == ".md") files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  for (const fs::path& f : files) seed += ReadFile(f);
  return RepeatTo1MiB(seed);
}

std::string ParityCorpusText() {
  const Json reference =
      Json::parse(ReadFile(fs::path(TTT_SOURCE_DIR) / "tests/data/tokenizer_parity/qwen3.json"));
  std::string seed;
  for (const Json& entry : reference["cases"]) seed += entry["text"].get<std::string>() + "\n";
  return RepeatTo1MiB(seed);
}

struct Measure {
  double seconds = 0;
  size_t tokens = 0;
};

// Best wall time of `reps` runs of `encode` (which returns the token count).
Measure Best(int reps, const std::function<size_t()>& encode) {
  Measure best{1e300, 0};
  for (int r = 0; r < reps; ++r) {
    const auto start = std::chrono::steady_clock::now();
    const size_t tokens = encode();
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (s < best.seconds) best = {s, tokens};
  }
  return best;
}

void PrintRow(const char* vocab, const char* text_name, const char* what, const Measure& m,
              const Measure& baseline, const char* baseline_what) {
  const double tps = m.tokens / m.seconds, base_tps = baseline.tokens / baseline.seconds;
  std::printf("| %s | %s | %s | %.0f | %.1f | %s | %.0f | %.1f | %.2f |\n", vocab, text_name, what,
              tps, kTextBytes / m.seconds / 1e6, baseline_what, base_tps,
              kTextBytes / baseline.seconds / 1e6, baseline.seconds / m.seconds);
}

std::unique_ptr<Tokenizer> LoadOrExit(const fs::path& dir) {
  auto tokenizer = Tokenizer::Load(dir);
  if (!tokenizer.ok()) {
    std::fprintf(stderr, "%s\n", std::string(tokenizer.status().message()).c_str());
    std::exit(1);
  }
  return *std::move(tokenizer);
}

size_t EncodeCount(const Tokenizer& tokenizer, std::string_view text, SpecialTokens special) {
  auto ids = tokenizer.Encode(text, special);
  if (!ids.ok()) std::exit(2);
  return ids->size();
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 5;
  fs::path data = "/var/cache/ttt-serve/tokenizers";
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--reps=", 0) == 0) reps = std::atoi(arg.c_str() + 7);
    if (arg.rfind("--data=", 0) == 0) data = arg.substr(7);
  }
  const std::vector<std::pair<const char*, std::string>> texts = {
      {"docs (English, code)", DocsText()}, {"parity corpus (40+ scripts)", ParityCorpusText()}};
  std::printf("Unicode %s; 1 MiB per text; best of %d runs\n\n",
              ttt::tokenizer::UnicodeVersion().c_str(), reps);
  std::printf(
      "| vocabulary | text | encoder | tokens/s | MB/s | baseline (same run) | "
      "tokens/s | MB/s | speed vs baseline |\n|---|---|---|---|---|---|---|---|---|\n");

  if (fs::exists(data / "qwen3/tokenizer.json") && fs::exists(data / "llama3/tokenizer.json")) {
    // Qwen3 with NFC against the same file without its normalizer.
    const auto qwen = LoadOrExit(data / "qwen3");
    const fs::path plain = fs::temp_directory_path() / "ttt_tokenizer_bench_qwen3_no_nfc";
    fs::create_directories(plain);
    Json json = Json::parse(ReadFile(data / "qwen3/tokenizer.json"));
    json["normalizer"] = nullptr;
    std::ofstream(plain / "tokenizer.json") << json.dump();
    fs::copy_file(data / "qwen3/tokenizer_config.json", plain / "tokenizer_config.json",
                  fs::copy_options::overwrite_existing);
    const auto qwen_plain = LoadOrExit(plain);
    const auto llama = LoadOrExit(data / "llama3");
    for (const auto& [name, text] : texts) {
      const std::string& t = text;
      const Measure nfc = Best(reps, [&] { return EncodeCount(*qwen, t, SpecialTokens::kAsText); });
      const Measure none =
          Best(reps, [&] { return EncodeCount(*qwen_plain, t, SpecialTokens::kAsText); });
      PrintRow("Qwen3", name, "NFC (as served)", nfc, none, "no normalizer (before issue 29)");
      const Measure as_text =
          Best(reps, [&] { return EncodeCount(*llama, t, SpecialTokens::kAsText); });
      const Measure parse =
          Best(reps, [&] { return EncodeCount(*llama, t, SpecialTokens::kParse); });
      PrintRow("Llama 3", name, "special tokens as text (default)", as_text, parse,
               "special tokens parsed");
    }
    fs::remove_all(plain);
  } else {
    std::printf("(no real vocabularies under %s: run `deploy/install-deps.sh test`)\n",
                data.c_str());
  }

  // The shipped SentencePiece model against libsentencepiece.
  const fs::path shipped = fs::path(TTT_SOURCE_DIR) / "models/ttt-brown";
  const auto ours = LoadOrExit(shipped);
  std::string error;
  auto reference = ttt::tokenizer::reference::SentencePieceReference::Load(
      (shipped / "tokenizer.model").string(), &error);
  if (reference == nullptr) {
    std::fprintf(stderr, "libsentencepiece: %s\n", error.c_str());
    return 1;
  }
  for (const auto& [name, text] : texts) {
    const std::string& t = text;
    const Measure m = Best(reps, [&] { return EncodeCount(*ours, t, SpecialTokens::kAsText); });
    const Measure base = Best(reps, [&] {
      std::vector<int> ids;
      if (!reference->Encode(t, &ids, &error)) std::exit(3);
      return ids.size();
    });
    PrintRow("ttt-brown (SentencePiece)", name, "ttt-serve", m, base, "libsentencepiece");
  }
  return 0;
}
