// The size bound of a model's SequenceState (see state_size.h).
#include "engine/state_size.h"

#include <algorithm>

#include <c10/core/ScalarType.h>

#include "engine/internal/fast_weight.h"
#include "engine/internal/model_tensors.h"

namespace ttt::engine {

StateSizeBound MaxStateSize(const Model& model) {
  const ModelConfig& c = model.config();
  constexpr int64_t kF32 = 4, kF64 = 8;
  StateSizeBound b;
  const int64_t ttt_layers = static_cast<int64_t>(model.active_ttt_layers().size());
  const int64_t pending_rows = std::max<int64_t>(c.ttt_chunk - 1, 0);
  b.fixed_bytes = ttt_layers * kF32 *
                      (c.hidden_size * c.intermediate_size +
                       pending_rows * (c.intermediate_size + c.hidden_size)) +
                  kF32 * c.vocab_size;
  b.bytes_per_cached_token = c.num_hidden_layers * 2 * c.num_key_value_heads * c.head_dim *
                             static_cast<int64_t>(c10::elementSize(ModelDtype(model)));
  if (auto window = model.attention_window()) {
    b.max_cached_tokens = std::max<int64_t>(*window - 1, 0);
  }
  // A factored delta (a fork that learned) adds its increments: fewer bytes than a dense delta
  // (internal::MaxIncrementRows) and a coefficient per chunk of them, plus two.
  const int64_t increment_rows =
      internal::MaxIncrementRows(c.hidden_size, c.intermediate_size, c.ttt_chunk);
  const int64_t increments = c.ttt_chunk > 0 ? increment_rows / c.ttt_chunk : 0;
  b.fixed_bytes += ttt_layers * (kF32 * increment_rows * (c.hidden_size + c.intermediate_size) +
                                 kF64 * (increments + 2));
  b.tensor_count = 2 * c.num_hidden_layers + 6 * ttt_layers + 1;
  return b;
}

}  // namespace ttt::engine
