// The decode step and the vocabulary rule (see decode.h).
#include "engine/decode.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <exception>

#include "absl/strings/str_cat.h"
#include "engine/internal/sequence_tensors.h"
#include "util/error_reason.h"

namespace ttt::engine {

absl::Status ValidateTokens(const ModelConfig& config, absl::Span<const int32_t> tokens) {
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= config.vocab_size) {
      return util::WithReason(
          absl::InvalidArgumentError(absl::StrCat("token id ", tokens[i], " at index ", i,
                                                  " is outside the vocabulary [0, ",
                                                  config.vocab_size, ")")),
          util::kReasonTokenOutOfVocab,
          {{"token_id", absl::StrCat(tokens[i])}, {"vocab_size", absl::StrCat(config.vocab_size)}});
    }
  }
  return absl::OkStatus();
}

bool HasNextTokenLogits(const SequenceState& state) {
  return TensorsOf(state).last_logits.defined();
}

absl::StatusOr<DecodedToken> DecodeNext(const SequenceState& state, Sampler& sampler) {
  if (!HasNextTokenLogits(state)) {
    return absl::FailedPreconditionError("the session has no context to continue");
  }
  try {
    c10::InferenceMode guard;
    at::Tensor logits = TensorsOf(state).last_logits.to(at::kFloat).reshape({-1});
    const at::Tensor cpu = logits.detach().cpu().contiguous();
    DecodedToken out;
    out.token = sampler.Sample(absl::MakeConstSpan(cpu.data_ptr<float>(), cpu.numel()));
    out.logprob = at::log_softmax(logits, 0)[out.token].item<float>();
    return out;
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("sampling failed: ", e.what()));
  }
}

}  // namespace ttt::engine
