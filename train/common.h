// Shared pieces of the trainer (ttt-train) and the evaluator (ttt-eval): token-id corpora,
// training windows, the synthetic associative-recall task, fresh model initialisation, and writing
// a model folder in the Hugging Face layout. The model itself is the engine's (engine/model.h).
#pragma once

#include <cstdint>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "absl/status/statusor.h"
#include "engine/config.h"
#include "engine/internal/model_tensors.h"
#include "engine/internal/safetensors.h"

namespace ttt::train {

// Token ids of one corpus split: one document per line of space-separated ids, as
// `spm_encode --output_format=id` writes them (tools/prepare_data.sh).
struct Corpus {
  std::vector<std::vector<int32_t>> docs;
  int64_t total_tokens = 0;
};

// Reads a token-id file. NOT_FOUND / INVALID_ARGUMENT (a non-number, an id outside [0, vocab)).
absl::StatusOr<Corpus> LoadTokenIds(const std::filesystem::path& path, int64_t vocab_size);

// A [batch, length] int64 tensor of windows sampled at random offsets inside documents chosen
// with probability proportional to their length. With probability `bos_prob` a window starts at
// its document's start with `bos` prepended (how a served stream starts). Documents shorter than
// `length` are padded by continuing into the next document after an eos/bos pair.
at::Tensor SampleTextWindows(const Corpus& corpus, int64_t batch, int64_t length, int64_t bos,
                             int64_t eos, double bos_prob, std::mt19937_64& rng);

// Windows that re-read: bos, the first `length - 1 - reread` tokens of a document, then its first
// `reread` tokens again (what a session sees when a user sends a document it has already read).
// Documents are drawn as in SampleTextWindows; a short one continues into the next as there.
at::Tensor SampleRereadWindows(const Corpus& corpus, int64_t batch, int64_t length, int64_t reread,
                               int64_t bos, int64_t eos, std::mt19937_64& rng);

// Windows that each hold one document and nothing of another, so that fast weights never carry
// across a document boundary in training: what a session serving unrelated documents sees with
// `fade_at_document_end: 1` (or `reset_at_document_end`). A window stops at its document's end
// (then eos); the rest of the row is padding that no target counts.
struct DocumentWindows {
  at::Tensor tokens;   // [batch, length] int64
  at::Tensor counted;  // [batch, length - 1] float: 1 where the target is a token of the document
                       // (or its closing eos), 0 on padding; target t-1 predicts token t
  at::Tensor first;    // re-reading windows: the first reading's targets (tokens 1 .. R-1)
  at::Tensor again;    // re-reading windows: the same tokens re-read (0 elsewhere)
};

// Text windows: with probability `bos_prob`, or when the document is not longer than `length`,
// bos and the document from its start; otherwise `length` tokens from a random offset inside it.
// Documents are drawn with probability proportional to their length.
DocumentWindows SampleDocumentWindows(const Corpus& corpus, int64_t batch, int64_t length,
                                      int64_t bos, int64_t eos, double bos_prob,
                                      std::mt19937_64& rng);

// Re-reading windows: bos, the document from its start (up to `length - 1 - reread` tokens: all of
// a document that fits), then its first `reread` tokens again right after, then padding.
DocumentWindows SampleDocumentRereadWindows(const Corpus& corpus, int64_t batch, int64_t length,
                                            int64_t reread, int64_t bos, int64_t eos,
                                            std::mt19937_64& rng);

// Associative recall in the style of MQAR (Arora et al., "Zoology", 2023), laid out so that the
// memory must live in the fast weights: bos, `pairs` key-value pairs (inside the first TTT chunk
// when they fit, otherwise none split by a chunk edge), natural-text filler until the attention
// window has moved past every pair and a chunk boundary is reached, then every key again in
// random order, each followed by its value.
// Keys and values are drawn from two disjoint fixed sets of ordinary vocabulary pieces.
struct RecallSpec {
  int64_t pairs = 24;
  int64_t num_keys = 64;      // size of the key set (and of the value set)
  int64_t key_base = 1000;    // keys are ids [key_base, key_base + num_keys)
  int64_t value_base = 2000;  // values are ids [value_base, value_base + num_keys)
  int64_t window = 64;        // attention window the layout must clear
  int64_t chunk = 64;         // TTT chunk size the layout aligns to
};

struct RecallEpisode {
  std::vector<int64_t> tokens;
  int64_t filler_begin = 0;  // [filler_begin, query_begin) is natural text
  int64_t query_begin = 0;   // first query key; queries are (key, value) at query_begin + 2i
  std::vector<int64_t> value_positions;  // positions holding a queried value (the targets)
};

// The recall layout for a vocabulary of `vocab_size` ids: the fixed sets above where they fit
// (the shipped model's), else keys from a third and values from two thirds of the vocabulary
// (a user's model may have a small one). REQUIRES: vocab_size >= kMinRecallVocab.
inline constexpr int64_t kMinRecallVocab = 3 * 64 + 3;
RecallSpec RecallSpecFor(int64_t vocab_size);

// Length of every episode of `spec` (all episodes have the same length).
int64_t RecallLength(const RecallSpec& spec);
// The pairs come first, none split by a chunk edge (a bos fills the chunk's last position where
// one would be); REQUIRES: filler has documents longer than the filler.
RecallEpisode MakeRecallEpisode(const RecallSpec& spec, const Corpus& filler, int64_t bos,
                                std::mt19937_64& rng);

// Shape of a fresh model (the defaults are the shipped models/ttt-brown).
struct FreshModelSpec {
  int64_t vocab_size = 4096;
  int64_t hidden_size = 128;
  int64_t intermediate_size = 384;
  int64_t layers = 4;
  int64_t heads = 2;
  int64_t kv_heads = 2;
  int64_t window = 64;  // 0 = full attention
  bool ttt = true;
  std::vector<int64_t> ttt_layers = {1, 3};
  int64_t ttt_chunk = 64;
  double ttt_lr = 1.0;
  bool tie_embeddings = true;
  int64_t bos = 1;
  int64_t eos = 2;
};

engine::ModelConfig MakeConfig(const FreshModelSpec& spec);

// Llama-style initialisation: N(0, 0.02) for embeddings and projections (output projections
// scaled by 1/sqrt(2 * layers)), RMSNorm weights 1, and for each TTT layer a zero depthwise
// conv and an identity ttt_proj (the official code's init: V = 0 at first, so the model starts
// as the plain model and learns its target). Deterministic in `seed`.
engine::NamedTensors InitWeights(const engine::ModelConfig& config, uint64_t seed);

// The TTT parameters a TTT layer of `config` lacks in `weights` (zero conv, identity ttt_proj),
// for continual training of a checkpoint that has none.
engine::NamedTensors MissingTttWeights(const engine::ModelConfig& config,
                                       const engine::NamedTensors& weights);

// Writes `dir`/config.json and `dir`/model.safetensors (tensors cast to `dtype`: "f32", "bf16"
// or "f16"), atomically each; `metadata` goes into the safetensors header.
absl::Status WriteHfModel(const std::filesystem::path& dir, const engine::ModelConfig& config,
                          const engine::NamedTensors& weights, const std::string& dtype,
                          const std::map<std::string, std::string>& metadata);

// Copies the tokenizer files found in `from` (tokenizer.model, tokenizer.json,
// tokenizer_config.json, special_tokens_map.json) into `to`, or `from` itself when it is a file.
absl::Status CopyTokenizer(const std::filesystem::path& from, const std::filesystem::path& to);

// "1h02m03s"-style duration.
std::string FormatDuration(double seconds);

}  // namespace ttt::train
