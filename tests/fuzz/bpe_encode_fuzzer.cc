// libFuzzer target: a byte-level BPE tokenizer (tests/data/tokenizer_bpe: Llama-3 pre-tokenizer
// regex, 400 merges, added tokens) on arbitrary bytes. Byte-level BPE is lossless, so valid
// UTF-8 must decode back to exactly itself; the bytes read as ids must decode within the
// tokenizer invariants.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "tests/fuzz/fuzz_check.h"
#include "tests/fuzz/tokenizer_checks.h"
#include "tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const ttt::tokenizer::Tokenizer* const tok = [] {
    auto loaded = ttt::tokenizer::Tokenizer::Load(TTT_SOURCE_DIR "/tests/data/tokenizer_bpe");
    FUZZ_CHECK(loaded.ok(), "%s", loaded.status().ToString().c_str());
    return loaded->release();
  }();
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const std::vector<int32_t> ids = ttt::fuzz::CheckEncode(*tok, text);
  if (ttt::tokenizer::ValidateUtf8(text).ok()) {
    const std::string back = tok->Decode(ids);
    FUZZ_CHECK(back == text, "Decode(Encode(x)) != x for %zu bytes (got %zu)", size, back.size());
  }
  ttt::fuzz::CheckDecode(*tok, ttt::fuzz::IdsFromBytes(data, size, tok->vocab_size()));
  return 0;
}
