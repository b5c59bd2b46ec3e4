// libFuzzer target: the shipped default model's SentencePiece tokenizer (models/ttt-brown) on
// arbitrary bytes, as the server's Ingest and Score see text: the bytes are encoded (refused
// exactly when not UTF-8) and, read as ids, decoded.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>

#include "tests/fuzz/fuzz_check.h"
#include "tests/fuzz/tokenizer_checks.h"
#include "tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const ttt::tokenizer::Tokenizer* const tok = [] {
    auto loaded = ttt::tokenizer::Tokenizer::Load(TTT_SOURCE_DIR "/models/ttt-brown");
    FUZZ_CHECK(loaded.ok(), "%s", loaded.status().ToString().c_str());
    return loaded->release();
  }();
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  ttt::fuzz::CheckEncode(*tok, text);
  ttt::fuzz::CheckDecode(*tok, ttt::fuzz::IdsFromBytes(data, size, tok->vocab_size()));
  return 0;
}
