// libFuzzer target: the SentencePiece model reader (tokenizer.model: the hand-written protobuf
// wire reader, then the model's semantic checks) on arbitrary bytes. A model it accepts must
// encode and decode a fixed mixed-script text within the tokenizer invariants.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "tests/fuzz/fuzz_check.h"
#include "tests/fuzz/tokenizer_checks.h"
#include "tokenizer/internal/sentencepiece_model.h"
#include "tokenizer/internal/sentencepiece_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using ttt::tokenizer::internal::SentencePieceTokenizer;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  auto proto = ttt::tokenizer::internal::ParseSentencePieceModel(bytes);
  auto tok = SentencePieceTokenizer::CreateFromBytes(bytes, "fuzz/tokenizer.model");
  if (!tok.ok()) {
    const absl::StatusCode code = tok.status().code();
    FUZZ_CHECK(
        code == absl::StatusCode::kInvalidArgument || code == absl::StatusCode::kUnimplemented,
        "unexpected status %s", tok.status().ToString().c_str());
    return 0;
  }
  FUZZ_CHECK(proto.ok(), "the tokenizer accepted bytes the model parser refuses: %s",
             proto.status().ToString().c_str());
  ttt::fuzz::CheckEncode(**tok, "Hello  wörld, 123 <s> 日本語 \xF0\x9F\x98\x80\tend.\n");
  ttt::fuzz::CheckDecode(
      **tok, ttt::fuzz::IdsFromBytes(data, size < 64 ? size : 64, (*tok)->vocab_size()));
  return 0;
}
