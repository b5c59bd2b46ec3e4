// libFuzzer target: the tokenizer.json reader (byte-level BPE: vocab, merges, added tokens,
// pre-tokenizer regexes) and the tokenizer_config.json reader, on arbitrary bytes. A tokenizer it
// accepts must encode a fixed mixed-script text within the tokenizer invariants.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "tests/fuzz/fuzz_check.h"
#include "tests/fuzz/tokenizer_checks.h"
#include "tokenizer/internal/bpe_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using ttt::tokenizer::internal::BpeTokenizer;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto names = ttt::tokenizer::internal::ParseSpecialTokenNames(text, "fuzz/tokenizer_config.json");
  if (!names.ok()) {
    FUZZ_CHECK(names.status().code() == absl::StatusCode::kInvalidArgument, "unexpected status %s",
               names.status().ToString().c_str());
  }
  auto tok =
      BpeTokenizer::Create(text, "fuzz/tokenizer.json",
                           names.ok() ? *names : ttt::tokenizer::internal::SpecialTokenNames{});
  if (!tok.ok()) {
    const absl::StatusCode code = tok.status().code();
    FUZZ_CHECK(
        code == absl::StatusCode::kInvalidArgument || code == absl::StatusCode::kUnimplemented,
        "unexpected status %s", tok.status().ToString().c_str());
    return 0;
  }
  ttt::fuzz::CheckEncode(**tok,
                         "Hello  wörld, it's 12345 <|endoftext|> 日本語 \xF0\x9F\x98\x80\n\n");
  ttt::fuzz::CheckDecode(
      **tok, ttt::fuzz::IdsFromBytes(data, size < 64 ? size : 64, (*tok)->vocab_size()));
  return 0;
}
