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
    const at::Tensor& last = TensorsOf(state).last_logits;
    // The logits as CPU float32 in order: a decode step's are already (no operation then).
    const bool in_place =
        last.device().is_cpu() && last.scalar_type() == at::kFloat && last.is_contiguous();
    const at::Tensor cpu = in_place ? last : last.to(at::kFloat).reshape({-1}).cpu().contiguous();
    DecodedToken out;
    out.token = sampler.Sample(absl::MakeConstSpan(cpu.data_ptr<float>(), cpu.numel()));
    // LibTorch's vectorised log_softmax (a scalar loop of expf over the vocabulary was slower),
    // read at the token: one operation.
    const at::Tensor log_probs = at::_log_softmax(cpu.dim() == 1 ? cpu : cpu.view({-1}), 0, false);
    out.logprob = log_probs.data_ptr<float>()[out.token];
    return out;
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("sampling failed: ", e.what()));
  }
}

}  // namespace ttt::engine
