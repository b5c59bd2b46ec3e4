// The decoder (Llama / Qwen3 family) with In-Place TTT in its configured layers, run on batches of
// independent sequences. DESIGN.md section 1 is the method; this file is its contract. Plain
// types only: the tensors sit behind Model::Weights and SequenceState; LibTorch programs (the
// trainer, benchmarks, engine tests) reach them through engine/internal/model_tensors.h.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/config.h"
#include "engine/sequence.h"

namespace ttt::engine {

struct ModelOptions {
  std::string device = "cpu";  // "cpu", "cuda", "cuda:N"
  std::string dtype = "f32";   // "f32" or "bf16": weights and KV cache (deltas: ttt_delta_dtype)
  // Overrides the checkpoint's ttt_lr (eta) when set; eta = 0 serves the plain model.
  std::optional<double> ttt_lr;
  std::optional<int64_t> sliding_window;  // overrides the config's window when set (0 = full)
  // Overrides the config's ttt_delta_dtype when set: "float32" or "bfloat16".
  std::optional<std::string> ttt_delta_dtype;
};

// CPU threads for LibTorch's intra-op pool and for OpenBLAS's own pool (LibTorch sets only the
// first; two pools of spinning threads on a small machine slow small products down several-fold).
// 0 = the CPUs this process may use (util/cpu_quota.h: its affinity mask capped by its cgroup's
// CPU quota, rounded up), not the node's core count. Call once, before serving.
void SetCpuThreads(int threads);

// How a multi-chunk ingest runs the TTT layers.
enum class IngestMode {
  kParallel,    // all chunks at once: per-chunk updates and their exclusive prefix sums
  kSequential,  // chunk by chunk through the whole stack, folding each update in before the next
};

// One sequence's part of a batched ingest.
struct IngestItem {
  SequenceState* state = nullptr;  // advanced in place
  std::vector<int32_t> tokens;     // may be empty
};

// Per item: log p(token | everything before it) for each ingested token, computed before that
// token (or its chunk) updated anything; NaN for the stream's very first token.
using IngestLogProbs = std::vector<float>;

// Thread-compatible: const methods may run concurrently on different states; one engine thread
// normally owns it.
class Model {
 public:
  // Loads config.json and the weights from a Hugging Face folder. Errors: NOT_FOUND (files),
  // INVALID_ARGUMENT (config or weights malformed, a tensor missing or misshapen, bad options).
  static absl::StatusOr<std::unique_ptr<Model>> Load(const std::filesystem::path& dir,
                                                     const ModelOptions& options = {});
  // (ModelFromWeights in engine/internal/model_tensors.h builds one from tensors.)

  const ModelConfig& config() const { return config_; }
  // Identifies config + weights: lower-case hex SHA-256 over the normalised config JSON and, in
  // name order, each weight tensor of the file as loaded (name, dtype, shape, bytes; an lm_head
  // a tied model ignores is left out). Independent of --device/--dtype; costs one pass over the
  // weights at load.
  const std::string& fingerprint() const;

  // A fresh stream at position 0 with fast weights W_down^(0).
  SequenceState NewSequence() const;
  // Rebuilds a state from its EncodeSequence bytes (a checkpoint file), bit-exactly, on this
  // model's device; `source` names the bytes in messages. DATA_LOSS when the bytes are not a
  // readable safetensors file; INVALID_ARGUMENT names what does not fit this model.
  absl::StatusOr<SequenceState> RestoreSequence(std::string bytes, const std::string& source) const;
  // The largest stream position a state may hold: positions stay exact in every product that
  // uses them (2^48 tokens is years of streaming at any speed this engine reaches).
  static constexpr int64_t kMaxPosition = int64_t{1} << 48;
  // The rules a restored state meets beyond its shapes (RestoreSequence applies them):
  // position in [0, kMaxPosition]; every layer caches exactly the tokens the window keeps;
  // chunks_applied = position / chunk with TTT (0 without); last_logits present iff position
  // > 0; every value finite. INVALID_ARGUMENT naming `source` and the rule otherwise.
  absl::Status CheckSequence(const SequenceState& state, const std::string& source) const;
  // Layer indices where TTT is active (empty when eta = 0 or the checkpoint has no TTT params).
  const std::vector<int64_t>& active_ttt_layers() const;
  // Attention window in tokens (nullopt = full attention), after ModelOptions overrides.
  std::optional<int64_t> attention_window() const;
  // Back to the fresh state, keeping nothing.
  void Reset(SequenceState& state) const { state = NewSequence(); }
  // Multiplies each TTT layer's accumulated fast-weight delta by `keep` in [0, 1] (1 changes
  // nothing; 0 forgets what the fast weights learned and keeps the context: position, KV cache,
  // the unfinished chunk). For a boundary between documents that may be unrelated: what the
  // previous one taught costs the next one (docs/model.md, "Memory and carry-over"). A delta
  // that other states share is replaced, not written.
  void FadeFastWeights(SequenceState& state, double keep) const;

  // Feeds each item's tokens into its state in one batched forward: extends its KV cache, folds
  // every chunk that completes into its fast weights, buffers the rest. Results do not depend on
  // how a stream is split across calls, nor on which other sequences share the batch.
  // INVALID_ARGUMENT for a token outside the vocabulary (no state is touched then).
  absl::StatusOr<std::vector<IngestLogProbs>> Ingest(absl::Span<IngestItem> items,
                                                     IngestMode mode = IngestMode::kParallel) const;

  ~Model();

  // The tensors, device and serving settings (engine/internal/model_weights.h).
  struct Weights;

 private:
  Model(ModelConfig config, std::unique_ptr<Weights> weights);
  friend class ModelAccess;

  ModelConfig config_;
  std::unique_ptr<Weights> weights_;
};

}  // namespace ttt::engine
