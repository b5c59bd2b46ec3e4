// The byte-level BPE test tokenizer (see byte_level_tokenizer.h).
#include "tests/testing/byte_level_tokenizer.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "tests/testing/utf8.h"

namespace ttt::testing {

void WriteByteLevelTokenizer(const std::filesystem::path& dir, const std::string& added_tokens) {
  // GPT-2's byte-to-unicode table; printable ASCII, then space (U+0120) and newline (U+010A)
  // get the low ids, the other bytes ids past the model's vocabulary.
  auto utf8 = [](int cp) { return AppendUtf8("", cp); };
  std::vector<int> symbol(256);
  int extra = 0;
  for (int b = 0; b < 256; ++b) {
    const bool keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
    symbol[b] = keep ? b : 256 + extra++;
  }
  std::vector<int> order;
  for (int b = 33; b <= 126; ++b) order.push_back(b);
  order.push_back(' ');
  order.push_back('\n');
  for (int b = 0; b < 256; ++b) {
    if (std::find(order.begin(), order.end(), b) == order.end()) order.push_back(b);
  }
  std::vector<std::string> keys;
  for (int b : order) keys.push_back(utf8(symbol[b]));
  // Id 96, the last inside the model's vocabulary: "é" (bytes C3 A9), by the one merge.
  const std::string e_acute = utf8(symbol[0xC3]) + utf8(symbol[0xA9]);
  keys.insert(keys.begin() + 96, e_acute);
  std::string vocab;
  for (size_t id = 0; id < keys.size(); ++id) {
    std::string key = keys[id];
    if (key == "\"" || key == "\\") key = "\\" + key;
    vocab += (id ? ", \"" : "\"") + key + "\": " + std::to_string(id);
  }
  const std::string merges = "\"" + utf8(symbol[0xC3]) + " " + utf8(symbol[0xA9]) + "\"";
  std::ofstream out(dir / "tokenizer.json");
  out << R"({"version": "1.0", "added_tokens": )" << added_tokens << R"(, "normalizer": null,
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                      "use_regex": true},
    "post_processor": null,
    "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                "use_regex": true},
    "model": {"type": "BPE", "dropout": null, "unk_token": null,
              "continuing_subword_prefix": null, "end_of_word_suffix": null,
              "fuse_unk": false, "byte_fallback": false, "vocab": {)"
      << vocab << R"(}, "merges": [)" << merges << "]}}";
}

std::unique_ptr<tokenizer::Tokenizer> LoadByteLevelTokenizer() {
  static std::atomic<int> loads{0};
  const std::filesystem::path dir = std::filesystem::temp_directory_path() /
                                    ("ttt-byte-level-tokenizer-" + std::to_string(::getpid()) +
                                     "-" + std::to_string(loads.fetch_add(1)));
  std::filesystem::create_directories(dir);
  WriteByteLevelTokenizer(dir);
  auto tok = tokenizer::Tokenizer::Load(dir);
  std::filesystem::remove_all(dir);
  if (!tok.ok()) {
    std::fprintf(stderr, "the byte-level test tokenizer does not load: %s\n",
                 tok.status().ToString().c_str());
    std::abort();
  }
  return std::move(*tok);
}

int ByteLevelId(char byte) {
  const int b = static_cast<unsigned char>(byte);
  if (b >= 33 && b <= 126) return b - 33;
  if (b == ' ') return 94;
  if (b == '\n') return 95;
  // The rest in byte order from 97: the control bytes but newline, then 127..255.
  if (b < 32) return 97 + b - (b > '\n' ? 1 : 0);
  return b + 1;
}

}  // namespace ttt::testing
