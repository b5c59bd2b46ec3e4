// ttt-train: trains a small Llama-style model with In-Place TTT layers from scratch, or continues
// an existing Hugging Face checkpoint (--init_from) with TTT parameters added (or plainly, with
// --no_ttt), using the engine's differentiable batched forward (ForwardTrain,
// engine/internal/model_tensors.h). AdamW, linear warm-up and cosine decay, gradient clipping,
// periodic validation (held-out loss and synthetic recall), resumable checkpoints (weights +
// optimizer state + step, swapped in atomically), and a progress line with loss, tokens/s and ETA.
// Writes the Hugging Face layout (config.json with the TTT keys, model.safetensors, tokenizer) to
// --out. docs/model.md has the command that made the shipped model.
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "engine/config.h"
#include "engine/internal/safetensors.h"
#include "engine/model.h"
#include "train/checkpoint.h"
#include "train/common.h"
#include "util/malloc_tuning.h"
#include "util/status_macros.h"

ABSL_FLAG(std::string, out, "models/ttt-brown", "model folder written at the end (HF layout)");
ABSL_FLAG(std::string, work_dir, "data/run-ttt", "checkpoints (resumed from when present)");
ABSL_FLAG(std::string, train_tokens, "data/brown/train.tok", "training token ids, a doc a line");
ABSL_FLAG(std::string, valid_tokens, "data/brown/valid.tok", "validation token ids");
ABSL_FLAG(std::string, tokenizer, "",
          "tokenizer file or folder copied into --out (default: models/ttt-brown/tokenizer.model, "
          "or --init_from's tokenizer in continual mode)");
ABSL_FLAG(std::string, init_from, "",
          "continual training: a Hugging Face model folder to which TTT parameters are added");
ABSL_FLAG(bool, freeze_base, false, "continual training: train only the TTT parameters");
ABSL_FLAG(int64_t, freeze_base_steps, 0,
          "continual training: train only the TTT parameters for the first N steps (a warm-up "
          "in which the fast-weight path learns before the base moves), then everything");
ABSL_FLAG(bool, no_ttt, false,
          "train without TTT layers (sliding window only); with --init_from: plain continued "
          "training of that checkpoint (the twin of a continual TTT run)");
ABSL_FLAG(int64_t, vocab, 4096, "vocabulary size (from scratch)");
ABSL_FLAG(int64_t, layers, 4, "decoder layers (from scratch)");
ABSL_FLAG(int64_t, d_model, 128, "hidden size (from scratch)");
ABSL_FLAG(int64_t, d_ff, 384, "MLP size (from scratch)");
ABSL_FLAG(int64_t, heads, 2, "attention heads (from scratch)");
ABSL_FLAG(int64_t, kv_heads, 2, "key/value heads (from scratch)");
ABSL_FLAG(int64_t, window, 64, "sliding attention window, 0 = full (from scratch)");
ABSL_FLAG(std::string, ttt_layers, "1,3", "TTT layer indices");
ABSL_FLAG(int64_t, ttt_chunk, 64, "TTT chunk size C");
ABSL_FLAG(double, ttt_lr, 1.0, "TTT step size eta");
ABSL_FLAG(double, ttt_clip, 0.0,
          "Frobenius-norm clip of each chunk's fast-weight update (config ttt_clip); 0 = off");
ABSL_FLAG(double, ttt_delta_cap, 0.0,
          "Frobenius-norm cap of each layer's accumulated fast-weight delta (config "
          "ttt_delta_cap), applied in training as in serving; 0 = off");
ABSL_FLAG(std::string, ttt_target, "",
          "input_embed (default from scratch) or hidden_states "
          "(default in continual mode)");
ABSL_FLAG(int64_t, seq_len, 512, "training sequence length");
ABSL_FLAG(int64_t, batch, 4, "text sequences per step");
ABSL_FLAG(int64_t, reread_batch, 0,
          "re-reading windows per step: bos, a document's start, then its first --reread_len "
          "tokens again (what a session sees when a user sends a document it has read)");
ABSL_FLAG(int64_t, reread_len, 512, "tokens re-read at the end of a re-reading window");
ABSL_FLAG(double, reread_weight, 1.0,
          "weight of the re-read tokens' loss relative to a text token (only memory carried "
          "across chunks can lower it; upweighting it asks the fast weights to keep a document)");
ABSL_FLAG(double, fresh_weight, 1.0,
          "weight of each window's first TTT chunk (read with the initial fast weights, as a "
          "session reads a document's start) relative to a text token; a long window has one such "
          "chunk in 64, a served document one in 20-50, so upweighting it keeps the slow weights "
          "good on their own");
ABSL_FLAG(int64_t, recall_batch, 8, "synthetic recall episodes per step (0 = none)");
ABSL_FLAG(int64_t, recall_pairs, 24, "key-value pairs per recall episode");
ABSL_FLAG(double, recall_weight, 4.0,
          "weight of the queried values' loss relative to a text token (the recall signal is a "
          "few tokens per episode; upweighting it makes the fast-weight memory learn sooner)");
ABSL_FLAG(double, bos_prob, 0.25, "probability a training window starts at a document start");
ABSL_FLAG(bool, document_windows, false,
          "every text and re-reading window holds one document and padding, none of the next "
          "(fast weights never cross a document boundary in training: what a session sees with "
          "fade_at_document_end 1); re-reading windows re-read right after the document");
ABSL_FLAG(int64_t, steps, 1000, "optimizer steps (the schedule's length)");
ABSL_FLAG(double, lr, 3e-3, "peak learning rate");
ABSL_FLAG(double, ttt_param_lr_mult, 1.0,
          "learning rate of the TTT parameters as a multiple of --lr (new parameters next to a "
          "trained base may learn faster than the base should move)");
ABSL_FLAG(double, min_lr_ratio, 0.1, "final learning rate as a fraction of the peak");
ABSL_FLAG(int64_t, warmup, 30, "linear warm-up steps");
ABSL_FLAG(double, weight_decay, 0.1, "AdamW decoupled weight decay (matrices only)");
ABSL_FLAG(double, clip, 1.0, "gradient clipping (global L2 norm)");
ABSL_FLAG(int64_t, eval_every, 100, "validate every N steps");
ABSL_FLAG(int64_t, eval_windows, 16, "validation windows of --seq_len tokens");
ABSL_FLAG(int64_t, eval_episodes, 64, "validation recall episodes");
ABSL_FLAG(int64_t, ckpt_every, 50, "checkpoint every N steps");
ABSL_FLAG(int64_t, log_every, 10, "progress line every N steps");
ABSL_FLAG(double, max_minutes, 0, "stop (checkpoint and export) after this much wall time, 0 = no");
ABSL_FLAG(
    double, budget_minutes, 0,
    "a wall-time budget (training time only, summed over resumes): the schedule's progress "
    "is max(step / steps, elapsed / budget), so the cosine decay ends on time; 0 = steps only");
ABSL_FLAG(int, threads, 1, "intra-op threads");
ABSL_FLAG(uint64_t, seed, 1, "seed (init and data order; resuming reproduces the data order)");
ABSL_FLAG(std::string, export_dtype, "",
          "dtype of the exported model.safetensors (f32, bf16, f16); empty: that of --init_from's "
          "embedding (a model continued keeps its precision, so TTT starts as an exact no-op), "
          "bf16 for a fresh model");
ABSL_FLAG(bool, export_only, false, "write --out from the last checkpoint and exit");

namespace ttt::train {
namespace {

namespace fs = std::filesystem;
using engine::Model;
using engine::ModelConfig;
using engine::NamedTensors;

std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop = true; }

absl::StatusOr<std::vector<int64_t>> ParseLayers(const std::string& s) {
  std::vector<int64_t> out;
  for (absl::string_view part : absl::StrSplit(s, ',', absl::SkipEmpty())) {
    int64_t v;
    if (!absl::SimpleAtoi(part, &v)) {
      return absl::InvalidArgumentError(absl::StrCat("bad --ttt_layers entry '", part, "'"));
    }
    out.push_back(v);
  }
  return out;
}

bool IsTttParam(const std::string& name) { return name.find(".ttt_") != std::string::npos; }

absl::StatusOr<NamedTensors> LoadAll(const fs::path& dir) {
  ASSIGN_OR_RETURN(auto store, engine::WeightStore::Open(dir));
  NamedTensors out;
  for (const auto& name : store->Names()) {
    ASSIGN_OR_RETURN(auto t, store->Load(name));
    out.emplace_back(name, t.to(at::kFloat));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// 1. Load: the model resumed from a checkpoint, continued from a Hugging Face folder, or fresh.

struct Loaded {
  ModelConfig config;
  std::unique_ptr<Model> model;
  Progress progress;
  fs::path resume;     // the checkpoint resumed from; empty when starting
  fs::path tokenizer;  // copied into --out by the export
};

// Continual training: `config` (an existing checkpoint's) gains the TTT keys from the flags and
// `weights` the TTT parameters it lacks, initialised so that TTT starts as a no-op (zero conv:
// V = 0, so every update is 0). With --no_ttt the checkpoint stays plain (the twin).
absl::Status AddTttForContinual(ModelConfig& config, NamedTensors& weights) {
  if (absl::GetFlag(FLAGS_no_ttt)) {
    config.ttt_mode = false;
    config.ttt_layers.clear();
    config.ttt_lr = 0;
    config.ttt_chunk = 0;
    config.ttt_clip = 0;
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(config.ttt_layers, ParseLayers(absl::GetFlag(FLAGS_ttt_layers)));
  config.ttt_mode = true;
  config.ttt_lr = absl::GetFlag(FLAGS_ttt_lr);
  config.ttt_chunk = absl::GetFlag(FLAGS_ttt_chunk);
  config.ttt_target = absl::GetFlag(FLAGS_ttt_target) == "input_embed"
                          ? engine::TttTarget::kInputEmbed
                          : engine::TttTarget::kHiddenStates;
  config.ttt_proj = true;
  config.ttt_clip = absl::GetFlag(FLAGS_ttt_clip);
  config.ttt_delta_cap = absl::GetFlag(FLAGS_ttt_delta_cap);
  for (auto& nt : MissingTttWeights(config, weights)) weights.push_back(std::move(nt));
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> FreshConfig() {
  FreshModelSpec spec;
  spec.vocab_size = absl::GetFlag(FLAGS_vocab);
  spec.layers = absl::GetFlag(FLAGS_layers);
  spec.hidden_size = absl::GetFlag(FLAGS_d_model);
  spec.intermediate_size = absl::GetFlag(FLAGS_d_ff);
  spec.heads = absl::GetFlag(FLAGS_heads);
  spec.kv_heads = absl::GetFlag(FLAGS_kv_heads);
  spec.window = absl::GetFlag(FLAGS_window);
  spec.ttt = !absl::GetFlag(FLAGS_no_ttt);
  ASSIGN_OR_RETURN(spec.ttt_layers, ParseLayers(absl::GetFlag(FLAGS_ttt_layers)));
  spec.ttt_chunk = absl::GetFlag(FLAGS_ttt_chunk);
  spec.ttt_lr = absl::GetFlag(FLAGS_ttt_lr);
  ModelConfig config = MakeConfig(spec);
  if (spec.ttt) {
    config.ttt_clip = absl::GetFlag(FLAGS_ttt_clip);
    config.ttt_delta_cap = absl::GetFlag(FLAGS_ttt_delta_cap);
  }
  // Validate through the engine's own parser before spending time.
  return engine::ParseModelConfig(engine::ModelConfigToJson(config));
}

absl::StatusOr<Loaded> LoadModel(const fs::path& work) {
  const std::string init_from = absl::GetFlag(FLAGS_init_from);
  Loaded out;
  NamedTensors weights;
  out.resume = FindCheckpoint(work);
  if (!out.resume.empty()) {
    ASSIGN_OR_RETURN(Checkpoint c, LoadCheckpoint(out.resume));
    out.config = std::move(c.config);
    weights = std::move(c.weights);
    out.progress = c.progress;
    // A cap given on a resume applies from here on: a run can continue with the serving cap.
    const double cap = absl::GetFlag(FLAGS_ttt_delta_cap);
    if (cap > 0 && out.config.ttt_mode) out.config.ttt_delta_cap = cap;
    std::printf("resuming from %s at step %lld (delta cap %g)\n", out.resume.c_str(),
                (long long)out.progress.step, out.config.ttt_delta_cap);
  } else if (!init_from.empty()) {
    ASSIGN_OR_RETURN(out.config, engine::LoadModelConfig(init_from));
    ASSIGN_OR_RETURN(weights, LoadAll(init_from));
    RETURN_IF_ERROR(AddTttForContinual(out.config, weights));
    std::printf("continual training of %s: TTT %s\n", init_from.c_str(),
                out.config.ttt_mode ? absl::StrJoin(out.config.ttt_layers, ",").c_str() : "off");
  } else {
    ASSIGN_OR_RETURN(out.config, FreshConfig());
    weights = InitWeights(out.config, absl::GetFlag(FLAGS_seed));
  }
  ASSIGN_OR_RETURN(out.model, ModelFromWeights(out.config, weights));
  out.tokenizer = absl::GetFlag(FLAGS_tokenizer);
  if (out.tokenizer.empty()) {
    out.tokenizer =
        init_from.empty() ? fs::path("models/ttt-brown/tokenizer.model") : fs::path(init_from);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// 2. Optimiser: AdamW over three groups (base matrices with weight decay, other base weights,
// the TTT parameters), in NamedWeights order, which the saved optimizer state relies on.

struct Optimiser {
  std::vector<torch::Tensor> base, ttt;  // trainable parameters
  std::vector<bool> group_is_base;       // per param group of `adamw`
  std::unique_ptr<torch::optim::AdamW> adamw;
  int64_t total_params = 0, trainable_params = 0;

  std::vector<torch::Tensor> All() const {
    std::vector<torch::Tensor> all = base;
    all.insert(all.end(), ttt.begin(), ttt.end());
    return all;
  }
  void SetLr(double base_lr, double ttt_lr) {
    auto& groups = adamw->param_groups();
    for (size_t g = 0; g < groups.size(); ++g) {
      static_cast<torch::optim::AdamWOptions&>(groups[g].options())
          .lr(group_is_base[g] ? base_lr : ttt_lr);
    }
  }
  // While the base is frozen its weights get no gradient; an all-zero one keeps the optimizer
  // state's layout the same before and after the warm-up (and with lr 0 nothing moves).
  void SetBaseFrozen(bool frozen) {
    for (auto& t : base) t.requires_grad_(!frozen);
  }
  void FillMissingGrads() {
    for (auto& t : base) {
      if (!t.grad().defined()) t.mutable_grad() = torch::zeros_like(t);
    }
  }
};

absl::StatusOr<Optimiser> MakeOptimiser(const Model& model) {
  const bool freeze_base = absl::GetFlag(FLAGS_freeze_base);
  Optimiser o;
  std::vector<torch::Tensor> decay, no_decay;
  std::set<const void*> seen;
  for (auto& [name, t] : NamedWeights(model)) {
    if (!seen.insert(t.unsafeGetTensorImpl()).second) continue;  // tied weights listed twice
    o.total_params += t.numel();
    if (freeze_base && !IsTttParam(name)) continue;
    t.requires_grad_(true);
    o.trainable_params += t.numel();
    if (IsTttParam(name)) {
      o.ttt.push_back(t);
    } else {
      (t.dim() >= 2 ? decay : no_decay).push_back(t);
      o.base.push_back(t);
    }
  }
  if (o.trainable_params == 0) return absl::InvalidArgumentError("nothing to train");
  auto opts = torch::optim::AdamWOptions(absl::GetFlag(FLAGS_lr)).betas({0.9, 0.95}).eps(1e-8);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  auto add = [&](std::vector<torch::Tensor> params, double wd, bool is_base) {
    if (params.empty()) return;
    groups.emplace_back(std::move(params), std::make_unique<torch::optim::AdamWOptions>(
                                               torch::optim::AdamWOptions(opts).weight_decay(wd)));
    o.group_is_base.push_back(is_base);
  };
  add(decay, absl::GetFlag(FLAGS_weight_decay), true);
  add(no_decay, 0.0, true);
  add(o.ttt, 0.0, false);
  o.adamw = std::make_unique<torch::optim::AdamW>(std::move(groups), opts);
  return o;
}

// ---------------------------------------------------------------------------------------------
// 3. The loop.

// Next-token loss of every target: logits [B, T, V], tokens [B, T] -> [B, T-1] (target t-1
// predicts token t). Computed once a forward; masks then pick and weight what they count.
torch::Tensor TokenLosses(const torch::Tensor& logits, const torch::Tensor& tokens) {
  const int64_t V = logits.size(-1);
  auto pred = logits.slice(1, 0, logits.size(1) - 1).reshape({-1, V});
  auto target = tokens.slice(1, 1).reshape({-1});
  auto nll = torch::nn::functional::cross_entropy(
      pred, target, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
  return nll.view({tokens.size(0), tokens.size(1) - 1});
}

// (weighted sum, sum of weights) of `losses` [B, T-1] under `mask` (weights; 0 = not counted).
std::pair<torch::Tensor, double> MaskedSum(const torch::Tensor& losses, const torch::Tensor& mask) {
  return {(losses * mask).sum(), mask.sum().item<double>()};
}

struct RecallBatch {
  torch::Tensor tokens;      // [B, L]
  torch::Tensor mask;        // [B, L-1] float: filler text and queried values
  torch::Tensor value_mask;  // [B, L-1] float: queried values only
};

RecallBatch MakeRecallBatch(const RecallSpec& spec, const Corpus& filler, int64_t n, int64_t bos,
                            std::mt19937_64& rng) {
  const int64_t L = RecallLength(spec);
  std::vector<int64_t> flat;
  auto mask = torch::zeros({n, L - 1});
  auto vmask = torch::zeros({n, L - 1});
  for (int64_t b = 0; b < n; ++b) {
    RecallEpisode ep = MakeRecallEpisode(spec, filler, bos, rng);
    flat.insert(flat.end(), ep.tokens.begin(), ep.tokens.end());
    // Target index t-1 predicts token t.
    for (int64_t t = ep.filler_begin + 1; t < ep.query_begin; ++t) mask[b][t - 1] = 1;
    for (int64_t t : ep.value_positions) {
      mask[b][t - 1] = 1;
      vmask[b][t - 1] = 1;
    }
  }
  return {torch::tensor(flat, torch::kLong).view({n, L}), mask, vmask};
}

// Masks [B, T-1] over a re-reading window's first reading (targets 1 .. R-1) and its re-reading
// (the last R-1 targets), for the loss on the same tokens read twice.
std::pair<torch::Tensor, torch::Tensor> RereadMasks(int64_t batch, int64_t T, int64_t R) {
  auto first = torch::zeros({batch, T - 1}), again = torch::zeros({batch, T - 1});
  first.slice(1, 0, R - 1).fill_(1);
  again.slice(1, T - R, T - 1).fill_(1);
  return {first, again};
}

struct Data {
  Corpus train, valid;
  RecallSpec recall;
  int64_t bos = 1, eos = 2;
  int64_t T = 0, batch = 0, reread_batch = 0, reread_len = 0, recall_batch = 0;
  int64_t chunk = 0;  // the TTT chunk (0 = no TTT: no fresh chunk to weight)
  int64_t StepTokens() const {
    return (batch + reread_batch) * T + recall_batch * RecallLength(recall);
  }
};

// A negative or non-finite weight would turn a loss term into one the optimiser maximises.
absl::Status CheckLossWeights() {
  const std::pair<const char*, double> weights[] = {
      {"--reread_weight", absl::GetFlag(FLAGS_reread_weight)},
      {"--fresh_weight", absl::GetFlag(FLAGS_fresh_weight)},
      {"--recall_weight", absl::GetFlag(FLAGS_recall_weight)}};
  for (const auto& [flag, w] : weights) {
    if (!std::isfinite(w) || w < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(flag, " ", w, " must be a finite number >= 0"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Data> LoadData(const ModelConfig& config) {
  Data d;
  ASSIGN_OR_RETURN(d.train, LoadTokenIds(absl::GetFlag(FLAGS_train_tokens), config.vocab_size));
  ASSIGN_OR_RETURN(d.valid, LoadTokenIds(absl::GetFlag(FLAGS_valid_tokens), config.vocab_size));
  d.recall = RecallSpecFor(config.vocab_size);
  d.recall.pairs = absl::GetFlag(FLAGS_recall_pairs);
  d.recall.window = config.sliding_window.value_or(64);
  d.recall.chunk = config.ttt_chunk > 0 ? config.ttt_chunk : 64;
  d.bos = config.bos_token_id >= 0 ? config.bos_token_id : 1;
  d.eos = config.eos_token_id >= 0 ? config.eos_token_id : 2;
  d.T = absl::GetFlag(FLAGS_seq_len);
  d.batch = absl::GetFlag(FLAGS_batch);
  d.reread_batch = absl::GetFlag(FLAGS_reread_batch);
  d.reread_len = absl::GetFlag(FLAGS_reread_len);
  d.recall_batch = absl::GetFlag(FLAGS_recall_batch);
  d.chunk = config.ttt_mode ? config.ttt_chunk : 0;
  if (d.recall_batch > 0 && config.vocab_size < kMinRecallVocab) {
    return absl::InvalidArgumentError(
        absl::StrCat("the recall episodes need a vocabulary of at least ", kMinRecallVocab,
                     " ids (this model has ", config.vocab_size, "): train with --recall_batch=0"));
  }
  if (d.reread_batch > 0 && (d.reread_len < 2 || 2 * d.reread_len >= d.T)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--reread_len ", d.reread_len, " must be in [2, seq_len / 2)"));
  }
  return d;
}

// A step's text: `batch` text windows, then `reread_batch` re-reading windows, with the masks
// of DocumentWindows (all targets counted unless --document_windows pads a row).
using TextBatch = DocumentWindows;

TextBatch SampleTrainingText(const Data& data, const Corpus& corpus, int64_t batch,
                             int64_t reread_batch, double bos_prob, std::mt19937_64& rng) {
  std::vector<TextBatch> parts;
  if (absl::GetFlag(FLAGS_document_windows)) {
    if (batch > 0) {
      parts.push_back(
          SampleDocumentWindows(corpus, batch, data.T, data.bos, data.eos, bos_prob, rng));
    }
    if (reread_batch > 0) {
      parts.push_back(SampleDocumentRereadWindows(corpus, reread_batch, data.T, data.reread_len,
                                                  data.bos, data.eos, rng));
    }
  } else {
    if (batch > 0) {
      TextBatch t;
      t.tokens = SampleTextWindows(corpus, batch, data.T, data.bos, data.eos, bos_prob, rng);
      t.counted = torch::ones({batch, data.T - 1});
      t.first = t.again = torch::zeros({batch, data.T - 1});
      parts.push_back(t);
    }
    if (reread_batch > 0) {
      TextBatch t;
      t.tokens = SampleRereadWindows(corpus, reread_batch, data.T, data.reread_len, data.bos,
                                     data.eos, rng);
      t.counted = torch::ones({reread_batch, data.T - 1});
      std::tie(t.first, t.again) = RereadMasks(reread_batch, data.T, data.reread_len);
      parts.push_back(t);
    }
  }
  auto cat = [&](auto field) {
    std::vector<torch::Tensor> v;
    for (const TextBatch& p : parts) v.push_back(p.*field);
    return torch::cat(v);
  };
  return {cat(&TextBatch::tokens), cat(&TextBatch::counted), cat(&TextBatch::first),
          cat(&TextBatch::again)};
}

struct ValidResult {
  double loss = 0;
  double recall_acc = -1;
  double first_read = -1, reread = -1;  // loss on the same tokens, first read and re-read
};

ValidResult Validate(const Model& model, const Data& data) {
  torch::NoGradGuard no_grad;
  std::mt19937_64 rng(12345);  // the same windows every time
  const int64_t windows = absl::GetFlag(FLAGS_eval_windows);
  double sum = 0, count = 0;
  for (int64_t done = 0; done < windows; done += 2) {
    const TextBatch text =
        SampleTrainingText(data, data.valid, std::min<int64_t>(2, windows - done), 0, 0.25, rng);
    auto [s, c] =
        MaskedSum(TokenLosses(ForwardTrain(model, text.tokens), text.tokens), text.counted);
    sum += s.item<double>();
    count += c;
  }
  ValidResult r;
  r.loss = sum / count;
  if (data.reread_batch > 0) {
    const TextBatch text = SampleTrainingText(data, data.valid, 0, 4, 0.25, rng);
    auto losses = TokenLosses(ForwardTrain(model, text.tokens), text.tokens);
    auto [fs, fc] = MaskedSum(losses, text.first);
    auto [as, ac] = MaskedSum(losses, text.again);
    r.first_read = fs.item<double>() / fc;
    r.reread = as.item<double>() / ac;
  }
  const int64_t episodes = absl::GetFlag(FLAGS_eval_episodes);
  if (data.recall_batch > 0 && episodes > 0) {
    auto rb = MakeRecallBatch(data.recall, data.valid, episodes, data.bos, rng);
    auto logits = ForwardTrain(model, rb.tokens);
    auto pred = logits.slice(1, 0, logits.size(1) - 1).argmax(-1);
    auto hit = (pred == rb.tokens.slice(1, 1)).to(torch::kFloat) * rb.value_mask;
    r.recall_acc = hit.sum().item<double>() / rb.value_mask.sum().item<double>();
  }
  return r;
}

// `done` in [0, 1]: how much of the run is behind (by steps or by the time budget).
double LearningRate(int64_t step, double done, int64_t warmup, double peak, double min_ratio) {
  if (step < warmup) return peak * static_cast<double>(step + 1) / static_cast<double>(warmup);
  const double progress = std::min(1.0, done);
  return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + std::cos(M_PI * progress)));
}

// Losses of one step, for the progress line.
struct StepLosses {
  double text = 0;
  double recall_value = -1;
  double reread = -1;
};

// One optimizer step on the data of step `step` (a function of the seed and the step only).
absl::StatusOr<StepLosses> TrainStep(Model& model, Optimiser& opt, const Data& data, int64_t step) {
  std::mt19937_64 rng(absl::GetFlag(FLAGS_seed) * 1000003ULL + step);
  opt.adamw->zero_grad();
  StepLosses out;
  const TextBatch text = SampleTrainingText(data, data.train, data.batch, data.reread_batch,
                                            absl::GetFlag(FLAGS_bos_prob), rng);
  const torch::Tensor& x = text.tokens;
  auto losses = TokenLosses(ForwardTrain(model, x), x);
  {
    auto [s, c] = MaskedSum(losses.detach(), text.counted);
    out.text = s.item<double>() / c;
  }
  torch::Tensor weights = text.counted.clone();
  if (data.reread_batch > 0) {
    auto [s, c] = MaskedSum(losses.detach(), text.again);
    out.reread = s.item<double>() / c;
    weights = weights + (absl::GetFlag(FLAGS_reread_weight) - 1.0) * text.again;
  }
  if (data.chunk > 1 && absl::GetFlag(FLAGS_fresh_weight) != 1.0) {
    // Targets 0 .. C-2 predict the first chunk's tokens, before any fast-weight update.
    weights.slice(1, 0, std::min(data.chunk - 1, data.T - 1))
        .add_(absl::GetFlag(FLAGS_fresh_weight) - 1.0);
    weights = weights * text.counted;  // padding stays uncounted
  }
  auto [loss_sum, n] = MaskedSum(losses, weights);
  if (data.recall_batch > 0) {
    auto rb = MakeRecallBatch(data.recall, data.train, data.recall_batch, data.bos, rng);
    auto rlosses = TokenLosses(ForwardTrain(model, rb.tokens), rb.tokens);
    const double w = absl::GetFlag(FLAGS_recall_weight);
    auto [rs, rn] = MaskedSum(rlosses, rb.mask + (w - 1.0) * rb.value_mask);
    auto [vs, vn] = MaskedSum(rlosses.detach(), rb.value_mask);
    out.recall_value = vs.item<double>() / vn;
    loss_sum = loss_sum + rs;
    n += rn;
  }
  if (!std::isfinite(out.text)) return absl::InternalError("loss is not finite");
  (loss_sum / n).backward();
  opt.FillMissingGrads();
  torch::nn::utils::clip_grad_norm_(opt.All(), absl::GetFlag(FLAGS_clip));
  opt.adamw->step();
  return out;
}

void PrintSummary(const ModelConfig& config, const Optimiser& opt, const Data& data) {
  std::printf(
      "model: %lld layers, d_model %lld, d_ff %lld, window %s, TTT %s (layers %s, chunk %lld, "
      "eta %g, clip %g); %lld params (%lld trainable)\n"
      "data: %zu train docs (%lld tokens), %zu valid docs; %lld tokens/step ((%lld text + %lld "
      "re-reading) x %lld + %lld x %lld recall); loss weights: re-read %g, recall values %g, "
      "first chunk %s\n",
      (long long)config.num_hidden_layers, (long long)config.hidden_size,
      (long long)config.intermediate_size,
      config.sliding_window ? std::to_string(*config.sliding_window).c_str() : "full",
      config.ttt_mode ? "on" : "off", absl::StrJoin(config.ttt_layers, ",").c_str(),
      (long long)config.ttt_chunk, config.ttt_lr, config.ttt_clip, (long long)opt.total_params,
      (long long)opt.trainable_params, data.train.docs.size(), (long long)data.train.total_tokens,
      data.valid.docs.size(), (long long)data.StepTokens(), (long long)data.batch,
      (long long)data.reread_batch, (long long)data.T, (long long)data.recall_batch,
      (long long)RecallLength(data.recall), absl::GetFlag(FLAGS_reread_weight),
      absl::GetFlag(FLAGS_recall_weight),
      // Without TTT no chunk is read before an update, so --fresh_weight does not apply.
      data.chunk > 1 ? absl::StrCat(absl::GetFlag(FLAGS_fresh_weight)).c_str() : "n/a (no TTT)");
  std::fflush(stdout);
}

class Trainer {
 public:
  Trainer(Loaded& loaded, Optimiser& opt, const Data& data, const fs::path& work)
      : config_(loaded.config),
        model_(*loaded.model),
        opt_(opt),
        data_(data),
        work_(work),
        prog_(loaded.progress),
        step0_(prog_.step),
        elapsed0_(prog_.elapsed_s),
        t0_(std::chrono::steady_clock::now()) {}

  // Runs until the step count, the budget, --max_minutes or a signal; returns why it stopped.
  absl::StatusOr<std::string> Run() {
    const int64_t steps = absl::GetFlag(FLAGS_steps);
    const int64_t freeze_steps = absl::GetFlag(FLAGS_freeze_base_steps);
    std::string stopped = "done";
    while (prog_.step < steps) {
      if (std::string why = StopReason(); !why.empty()) {
        stopped = why;
        break;
      }
      const bool frozen = prog_.step < freeze_steps;
      const double lr = LearningRate(prog_.step, DoneFraction(), absl::GetFlag(FLAGS_warmup),
                                     absl::GetFlag(FLAGS_lr), absl::GetFlag(FLAGS_min_lr_ratio));
      opt_.SetBaseFrozen(frozen);
      opt_.SetLr(frozen ? 0.0 : lr, lr * absl::GetFlag(FLAGS_ttt_param_lr_mult));
      ASSIGN_OR_RETURN(StepLosses losses, TrainStep(model_, opt_, data_, prog_.step));
      ++prog_.step;
      prog_.tokens += data_.StepTokens();
      prog_.elapsed_s = elapsed0_ + NowS();
      Log(losses, lr, frozen);
      if (prog_.step % absl::GetFlag(FLAGS_eval_every) == 0 || prog_.step == steps) Validate();
      if (prog_.step % absl::GetFlag(FLAGS_ckpt_every) == 0 || prog_.step == steps) {
        RETURN_IF_ERROR(SaveCheckpoint(work_, config_, model_, *opt_.adamw, prog_));
      }
    }
    if (prog_.step > step0_ && prog_.step % absl::GetFlag(FLAGS_ckpt_every) != 0) {
      RETURN_IF_ERROR(SaveCheckpoint(work_, config_, model_, *opt_.adamw, prog_));
    }
    if (stopped == "budget") Validate();
    if (stopped != "done") {
      std::printf("stopped (%s) at step %lld\n", stopped.c_str(), (long long)prog_.step);
    }
    return stopped;
  }

  const Progress& progress() const { return prog_; }

 private:
  double NowS() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  }
  double BudgetS() const { return absl::GetFlag(FLAGS_budget_minutes) * 60.0; }

  std::string StopReason() const {
    const double max_s = absl::GetFlag(FLAGS_max_minutes) * 60.0;
    if (g_stop) return "signal";
    if (max_s > 0 && NowS() > max_s) return "max_minutes";
    if (BudgetS() > 0 && prog_.step >= absl::GetFlag(FLAGS_warmup) &&
        elapsed0_ + NowS() >= BudgetS()) {
      return "budget";
    }
    return "";
  }

  // Fraction of the run behind us: by steps, or by the time budget when that is further along
  // (measured from the end of warm-up, so warm-up always completes).
  double DoneFraction() const {
    const int64_t warmup = absl::GetFlag(FLAGS_warmup), steps = absl::GetFlag(FLAGS_steps);
    double f = static_cast<double>(prog_.step - warmup) / std::max<int64_t>(1, steps - warmup);
    if (BudgetS() > 0) f = std::max(f, (elapsed0_ + NowS()) / BudgetS());
    return f;
  }

  void Log(const StepLosses& l, double lr, bool frozen) {
    auto ema = [](double& e, double v) { e = e < 0 ? v : 0.95 * e + 0.05 * v; };
    ema(ema_text_, l.text);
    if (l.recall_value >= 0) ema(ema_recall_, l.recall_value);
    if (l.reread >= 0) ema(ema_reread_, l.reread);
    const int64_t steps = absl::GetFlag(FLAGS_steps);
    if (prog_.step % absl::GetFlag(FLAGS_log_every) != 0 && prog_.step != steps) return;
    const double rate = (prog_.step - step0_) * data_.StepTokens() / std::max(1e-9, NowS());
    double eta_s = (steps - prog_.step) * data_.StepTokens() / std::max(1e-9, rate);
    if (BudgetS() > 0) eta_s = std::min(eta_s, BudgetS() - prog_.elapsed_s);
    std::printf(
        "step %lld/%lld (%.1f%%) | loss %.4f | re-read loss %.3f | recall-value loss "
        "%.3f | lr %.2e%s | %.0f tok/s | %.2f s/step | elapsed %s | ETA %s\n",
        (long long)prog_.step, (long long)steps, 100.0 * prog_.step / steps, ema_text_, ema_reread_,
        ema_recall_, lr, frozen ? " (base frozen)" : "", rate,
        NowS() / std::max<int64_t>(1, prog_.step - step0_), FormatDuration(prog_.elapsed_s).c_str(),
        FormatDuration(eta_s).c_str());
    std::fflush(stdout);
  }

  void Validate() {
    const ValidResult v = train::Validate(model_, data_);
    prog_.best_val = std::min(prog_.best_val, v.loss);
    std::printf("valid step %lld: loss %.4f (ppl %.1f)", (long long)prog_.step, v.loss,
                std::exp(v.loss));
    if (v.first_read >= 0) {
      std::printf(", re-reading %.4f -> %.4f (%+.1f%%)", v.first_read, v.reread,
                  100.0 * (v.reread / v.first_read - 1));
    }
    if (v.recall_acc >= 0) std::printf(", recall accuracy %.3f", v.recall_acc);
    std::printf("\n");
    std::fflush(stdout);
  }

  const ModelConfig& config_;
  Model& model_;
  Optimiser& opt_;
  const Data& data_;
  const fs::path work_;
  Progress prog_;
  const int64_t step0_;
  const double elapsed0_;
  const std::chrono::steady_clock::time_point t0_;
  double ema_text_ = -1, ema_recall_ = -1, ema_reread_ = -1;
};

// ---------------------------------------------------------------------------------------------
// 4. Export: the Hugging Face folder (config with the TTT keys, weights, tokenizer).

// --export_dtype, or the precision of the model continued from (bf16 for a fresh one).
absl::StatusOr<std::string> ExportDtype() {
  const std::string flag = absl::GetFlag(FLAGS_export_dtype);
  const std::string init_from = absl::GetFlag(FLAGS_init_from);
  if (!flag.empty() || init_from.empty()) return flag.empty() ? "bf16" : flag;
  ASSIGN_OR_RETURN(auto store, engine::WeightStore::Open(init_from));
  ASSIGN_OR_RETURN(at::Tensor embed, store->Load("model.embed_tokens.weight"));
  switch (embed.scalar_type()) {
    case at::kBFloat16:
      return std::string("bf16");
    case at::kHalf:
      return std::string("f16");
    default:
      return std::string("f32");
  }
}

absl::Status Export(const Loaded& loaded, const Progress& prog, const std::string& reason) {
  const fs::path out = absl::GetFlag(FLAGS_out);
  ASSIGN_OR_RETURN(const std::string dtype, ExportDtype());
  std::map<std::string, std::string> meta = {{"trained_by", "ttt-train"},
                                             {"steps", std::to_string(prog.step)},
                                             {"tokens", std::to_string(prog.tokens)},
                                             {"stopped", reason}};
  RETURN_IF_ERROR(WriteHfModel(out, loaded.config, NamedWeights(*loaded.model), dtype, meta));
  RETURN_IF_ERROR(CopyTokenizer(loaded.tokenizer, out));
  std::printf("wrote %s (step %lld)\n", out.c_str(), (long long)prog.step);
  return absl::OkStatus();
}

absl::Status Run() {
  RETURN_IF_ERROR(CheckLossWeights());
  torch::set_num_threads(absl::GetFlag(FLAGS_threads));
  const fs::path work = absl::GetFlag(FLAGS_work_dir);
  std::error_code ec;
  fs::create_directories(work, ec);
  if (ec) return absl::InternalError(absl::StrCat("creating ", work.string(), ": ", ec.message()));

  ASSIGN_OR_RETURN(Loaded loaded, LoadModel(work));
  ASSIGN_OR_RETURN(Optimiser opt, MakeOptimiser(*loaded.model));
  if (!loaded.resume.empty()) RETURN_IF_ERROR(LoadOptimizer(loaded.resume, *opt.adamw));
  if (absl::GetFlag(FLAGS_export_only)) {
    if (loaded.resume.empty()) return absl::NotFoundError("no checkpoint in " + work.string());
    return Export(loaded, loaded.progress, "export_only");
  }
  ASSIGN_OR_RETURN(Data data, LoadData(loaded.config));
  PrintSummary(loaded.config, opt, data);

  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  Trainer trainer(loaded, opt, data, work);
  ASSIGN_OR_RETURN(std::string stopped, trainer.Run());
  return Export(loaded, trainer.progress(), stopped);
}

}  // namespace
}  // namespace ttt::train

int main(int argc, char** argv) {
  ttt::util::TuneMallocForTensors(ttt::util::MallocUse::kBatchJob);
  absl::SetProgramUsageMessage("ttt-train: train a model with In-Place TTT (docs/model.md)");
  absl::ParseCommandLine(argc, argv);
  absl::Status s = ttt::train::Run();
  if (!s.ok()) {
    std::fprintf(stderr, "ttt-train: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
