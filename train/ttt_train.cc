// ttt-train: trains a small Llama-style model with In-Place TTT layers from scratch (or, with
// --init_from, adds TTT parameters to an existing Hugging Face checkpoint and trains them), using
// the engine's differentiable parallel forward (Model::ForwardTrain). AdamW, linear warm-up and
// cosine decay, gradient clipping, periodic validation (held-out loss and synthetic recall),
// resumable checkpoints (weights + optimizer state + step, swapped in atomically), and a progress
// line with loss, tokens/s and ETA. Writes the Hugging Face layout (config.json with the TTT keys,
// model.safetensors, tokenizer) to --out. docs/model.md has the command that made the shipped model.
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <sstream>
#include <string>
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
#include "engine/model.h"
#include "engine/safetensors.h"
#include "engine/status_macros.h"
#include "train/common.h"

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
ABSL_FLAG(bool, no_ttt, false, "train the baseline without TTT layers (sliding window only)");
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
ABSL_FLAG(std::string, ttt_target, "", "input_embed (default from scratch) or hidden_states "
          "(default in continual mode)");
ABSL_FLAG(int64_t, seq_len, 512, "training sequence length");
ABSL_FLAG(int64_t, batch, 4, "text sequences per step");
ABSL_FLAG(int64_t, recall_batch, 8, "synthetic recall episodes per step (0 = none)");
ABSL_FLAG(int64_t, recall_pairs, 24, "key-value pairs per recall episode");
ABSL_FLAG(double, recall_weight, 4.0,
          "weight of the queried values' loss relative to a text token (the recall signal is a "
          "few tokens per episode; upweighting it makes the fast-weight memory learn sooner)");
ABSL_FLAG(double, bos_prob, 0.25, "probability a training window starts at a document start");
ABSL_FLAG(int64_t, steps, 1000, "optimizer steps (the schedule's length)");
ABSL_FLAG(double, lr, 3e-3, "peak learning rate");
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
ABSL_FLAG(double, budget_minutes, 0,
          "a wall-time budget (training time only, summed over resumes): the schedule's progress "
          "is max(step / steps, elapsed / budget), so the cosine decay ends on time; 0 = steps only");
ABSL_FLAG(int, threads, 1, "intra-op threads");
ABSL_FLAG(uint64_t, seed, 1, "seed (init and data order; resuming reproduces the data order)");
ABSL_FLAG(std::string, export_dtype, "bf16", "dtype of the exported model.safetensors");
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

std::string ReadFile(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool IsTttParam(const std::string& name) { return name.find(".ttt_") != std::string::npos; }

// Training state that survives a restart besides weights and optimizer.
struct Progress {
  int64_t step = 0;
  int64_t tokens = 0;
  double elapsed_s = 0;
  double best_val = 1e30;
};

std::string ProgressJson(const Progress& p) {
  return absl::StrCat("{\"step\": ", p.step, ", \"tokens\": ", p.tokens, ", \"elapsed_s\": ",
                      p.elapsed_s, ", \"best_val\": ", p.best_val, "}\n");
}

double JsonNumber(const std::string& json, const std::string& key) {
  auto at = json.find("\"" + key + "\"");
  if (at == std::string::npos) return 0;
  at = json.find(':', at);
  return std::strtod(json.c_str() + at + 1, nullptr);
}

// fsyncs a directory so a rename in it is durable.
void SyncDir(const fs::path& dir) {
  std::FILE* f = std::fopen(dir.c_str(), "r");
  if (f != nullptr) {
    fsync(fileno(f));
    std::fclose(f);
  }
}

// Writes <work>/ckpt.tmp/{config.json, weights.safetensors, optimizer.pt, progress.json}, then
// swaps it in for <work>/ckpt (the old one is kept as ckpt.old until the swap is done, and a
// restart picks whichever complete one exists).
absl::Status SaveCheckpoint(const fs::path& work, const ModelConfig& config, const Model& model,
                            torch::optim::Optimizer& opt, const Progress& prog) {
  const fs::path tmp = work / "ckpt.tmp", cur = work / "ckpt", old = work / "ckpt.old";
  std::error_code ec;
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  NamedTensors weights;
  for (const auto& [name, t] : model.NamedWeights()) weights.emplace_back(name, t.detach());
  RETURN_IF_ERROR(engine::WriteSafetensors(tmp / "weights.safetensors", weights));
  try {
    torch::save(opt, (tmp / "optimizer.pt").string());
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("saving optimizer state: ", e.what_without_backtrace()));
  }
  RETURN_IF_ERROR(engine::WriteFileAtomically(tmp / "config.json",
                                              engine::ModelConfigToJson(config) + "\n"));
  RETURN_IF_ERROR(engine::WriteFileAtomically(tmp / "progress.json", ProgressJson(prog)));
  SyncDir(tmp);
  fs::remove_all(old, ec);
  if (fs::exists(cur)) fs::rename(cur, old, ec);
  if (ec) return absl::InternalError(absl::StrCat("rotating checkpoint: ", ec.message()));
  fs::rename(tmp, cur, ec);
  if (ec) return absl::InternalError(absl::StrCat("installing checkpoint: ", ec.message()));
  SyncDir(work);
  fs::remove_all(old, ec);
  return absl::OkStatus();
}

// The complete checkpoint folder to resume from, or empty.
fs::path FindCheckpoint(const fs::path& work) {
  for (const char* name : {"ckpt", "ckpt.old"}) {
    const fs::path p = work / name;
    if (fs::exists(p / "progress.json") && fs::exists(p / "optimizer.pt")) return p;
  }
  return {};
}

absl::StatusOr<NamedTensors> LoadAll(const fs::path& dir) {
  ASSIGN_OR_RETURN(auto store, engine::WeightStore::Open(dir));
  NamedTensors out;
  for (const auto& name : store->Names()) {
    ASSIGN_OR_RETURN(auto t, store->Load(name));
    out.emplace_back(name, t.to(at::kFloat));
  }
  return out;
}

absl::StatusOr<NamedTensors> LoadSafetensors(const fs::path& file) {
  ASSIGN_OR_RETURN(auto f, engine::SafetensorsFile::Open(file));
  NamedTensors out;
  for (const auto& e : f->entries()) {
    ASSIGN_OR_RETURN(auto t, f->Load(e.name));
    out.emplace_back(e.name, t.to(at::kFloat));
  }
  return out;
}

// Mean next-token loss over masked targets: logits [B, T, V], tokens [B, T], mask [B, T-1]
// (1 = counts). Returns (sum, count).
std::pair<torch::Tensor, int64_t> MaskedLossSum(const torch::Tensor& logits,
                                                const torch::Tensor& tokens,
                                                const torch::Tensor& mask) {
  const int64_t V = logits.size(-1);
  auto pred = logits.slice(1, 0, logits.size(1) - 1).reshape({-1, V});
  auto target = tokens.slice(1, 1).reshape({-1});
  auto m = mask.reshape({-1});
  auto nll = torch::nn::functional::cross_entropy(
      pred, target, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
  return {(nll * m).sum(), m.sum().item<int64_t>()};
}

struct RecallBatch {
  torch::Tensor tokens;  // [B, L]
  torch::Tensor mask;    // [B, L-1] float: filler text and queried values
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

struct ValidResult {
  double loss = 0;
  double recall_acc = 0;
};

ValidResult Validate(const Model& model, const Corpus& valid, const RecallSpec& spec,
                     int64_t windows, int64_t episodes, int64_t seq_len, int64_t bos,
                     int64_t eos) {
  torch::NoGradGuard no_grad;
  std::mt19937_64 rng(12345);  // the same windows every time
  double sum = 0;
  int64_t count = 0;
  for (int64_t done = 0; done < windows; done += 4) {
    auto x = SampleTextWindows(valid, std::min<int64_t>(4, windows - done), seq_len, bos, eos,
                               0.25, rng);
    auto [s, c] = MaskedLossSum(model.ForwardTrain(x), x,
                                torch::ones({x.size(0), seq_len - 1}));
    sum += s.item<double>();
    count += c;
  }
  ValidResult r;
  r.loss = sum / count;
  if (episodes > 0) {
    auto rb = MakeRecallBatch(spec, valid, episodes, bos, rng);
    auto logits = model.ForwardTrain(rb.tokens);
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

absl::Status Run() {
  torch::set_num_threads(absl::GetFlag(FLAGS_threads));
  const fs::path work = absl::GetFlag(FLAGS_work_dir), out = absl::GetFlag(FLAGS_out);
  const std::string init_from = absl::GetFlag(FLAGS_init_from);
  std::error_code ec;
  fs::create_directories(work, ec);

  // 1. The model: resumed, continued from a checkpoint, or fresh.
  ModelConfig config;
  NamedTensors weights;
  Progress prog;
  const fs::path resume = FindCheckpoint(work);
  if (!resume.empty()) {
    ASSIGN_OR_RETURN(config, engine::ParseModelConfig(ReadFile(resume / "config.json"),
                                                      (resume / "config.json").string()));
    ASSIGN_OR_RETURN(weights, LoadSafetensors(resume / "weights.safetensors"));
    const std::string pj = ReadFile(resume / "progress.json");
    prog.step = static_cast<int64_t>(JsonNumber(pj, "step"));
    prog.tokens = static_cast<int64_t>(JsonNumber(pj, "tokens"));
    prog.elapsed_s = JsonNumber(pj, "elapsed_s");
    prog.best_val = JsonNumber(pj, "best_val");
    std::printf("resuming from %s at step %lld\n", resume.c_str(), (long long)prog.step);
  } else if (!init_from.empty()) {
    ASSIGN_OR_RETURN(config, engine::LoadModelConfig(init_from));
    ASSIGN_OR_RETURN(weights, LoadAll(init_from));
    ASSIGN_OR_RETURN(auto layers, ParseLayers(absl::GetFlag(FLAGS_ttt_layers)));
    config.ttt_mode = true;
    config.ttt_layers = layers;
    config.ttt_lr = absl::GetFlag(FLAGS_ttt_lr);
    config.ttt_chunk = absl::GetFlag(FLAGS_ttt_chunk);
    config.ttt_target = absl::GetFlag(FLAGS_ttt_target) == "input_embed"
                            ? engine::TttTarget::kInputEmbed
                            : engine::TttTarget::kHiddenStates;
    config.ttt_proj = true;
    for (auto& nt : MissingTttWeights(config, weights)) weights.push_back(std::move(nt));
    std::printf("continual training of %s: TTT in layers %s\n", init_from.c_str(),
                absl::StrJoin(layers, ",").c_str());
  } else {
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
    config = MakeConfig(spec);
    // Validate through the engine's own parser before spending time.
    ASSIGN_OR_RETURN(config, engine::ParseModelConfig(engine::ModelConfigToJson(config)));
    weights = InitWeights(config, absl::GetFlag(FLAGS_seed));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<Model> model, Model::FromWeights(config, weights));
  weights.clear();

  fs::path tokenizer = absl::GetFlag(FLAGS_tokenizer);
  if (tokenizer.empty()) {
    tokenizer = init_from.empty() ? fs::path("models/ttt-brown/tokenizer.model") : fs::path(init_from);
  }
  const int64_t bos = config.bos_token_id >= 0 ? config.bos_token_id : 1;
  const int64_t eos = config.eos_token_id >= 0 ? config.eos_token_id : 2;

  // 2. Parameters and optimizer (order fixed by NamedWeights, which the optimizer state uses).
  const bool freeze_base = absl::GetFlag(FLAGS_freeze_base);
  std::vector<torch::Tensor> decay, no_decay;
  std::set<const void*> seen;
  int64_t n_params = 0, n_trainable = 0;
  for (auto& [name, t] : model->NamedWeights()) {
    if (!seen.insert(t.unsafeGetTensorImpl()).second) continue;  // tied weights listed twice
    n_params += t.numel();
    const bool trainable = !freeze_base || IsTttParam(name);
    if (!trainable) continue;
    t.requires_grad_(true);
    n_trainable += t.numel();
    (t.dim() >= 2 && !IsTttParam(name) ? decay : no_decay).push_back(t);
  }
  if (n_trainable == 0) return absl::InvalidArgumentError("nothing to train");
  const double peak = absl::GetFlag(FLAGS_lr);
  auto opts = torch::optim::AdamWOptions(peak).betas({0.9, 0.95}).eps(1e-8);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(
                                 torch::optim::AdamWOptions(opts).weight_decay(
                                     absl::GetFlag(FLAGS_weight_decay))));
  groups.emplace_back(no_decay, std::make_unique<torch::optim::AdamWOptions>(
                                    torch::optim::AdamWOptions(opts).weight_decay(0.0)));
  torch::optim::AdamW opt(std::move(groups), opts);
  if (!resume.empty()) {
    try {
      torch::load(opt, (resume / "optimizer.pt").string());
    } catch (const c10::Error& e) {
      return absl::InvalidArgumentError(
          absl::StrCat("loading optimizer state: ", e.what_without_backtrace()));
    }
  }
  std::vector<torch::Tensor> params = decay;
  params.insert(params.end(), no_decay.begin(), no_decay.end());

  auto do_export = [&](const std::string& reason) -> absl::Status {
    std::map<std::string, std::string> meta = {
        {"trained_by", "ttt-train"}, {"steps", std::to_string(prog.step)},
        {"tokens", std::to_string(prog.tokens)}, {"stopped", reason}};
    RETURN_IF_ERROR(WriteHfModel(out, config, model->NamedWeights(),
                                 absl::GetFlag(FLAGS_export_dtype), meta));
    RETURN_IF_ERROR(CopyTokenizer(tokenizer, out));
    std::printf("wrote %s (step %lld)\n", out.c_str(), (long long)prog.step);
    return absl::OkStatus();
  };
  if (absl::GetFlag(FLAGS_export_only)) {
    if (resume.empty()) return absl::NotFoundError("no checkpoint in " + work.string());
    return do_export("export_only");
  }

  // 3. Data.
  ASSIGN_OR_RETURN(Corpus train, LoadTokenIds(absl::GetFlag(FLAGS_train_tokens), config.vocab_size));
  ASSIGN_OR_RETURN(Corpus valid, LoadTokenIds(absl::GetFlag(FLAGS_valid_tokens), config.vocab_size));
  RecallSpec rspec;
  rspec.pairs = absl::GetFlag(FLAGS_recall_pairs);
  rspec.window = config.sliding_window.value_or(64);
  rspec.chunk = config.ttt_chunk > 0 ? config.ttt_chunk : 64;
  const int64_t steps = absl::GetFlag(FLAGS_steps), batch = absl::GetFlag(FLAGS_batch),
                rbatch = absl::GetFlag(FLAGS_recall_batch), T = absl::GetFlag(FLAGS_seq_len);
  const int64_t step_tokens = batch * T + rbatch * RecallLength(rspec);
  std::printf(
      "model: %lld layers, d_model %lld, d_ff %lld, window %s, TTT %s (layers %s, chunk %lld, "
      "eta %g); %lld params (%lld trainable)\n"
      "data: %zu train docs (%lld tokens), %zu valid docs; %lld tokens/step (%lld x %lld text + "
      "%lld x %lld recall), %lld steps\n",
      (long long)config.num_hidden_layers, (long long)config.hidden_size,
      (long long)config.intermediate_size,
      config.sliding_window ? std::to_string(*config.sliding_window).c_str() : "full",
      config.ttt_mode ? "on" : "off", absl::StrJoin(config.ttt_layers, ",").c_str(),
      (long long)config.ttt_chunk, config.ttt_lr, (long long)n_params, (long long)n_trainable,
      train.docs.size(), (long long)train.total_tokens, valid.docs.size(), (long long)step_tokens,
      (long long)batch, (long long)T, (long long)rbatch, (long long)RecallLength(rspec),
      (long long)steps);
  std::fflush(stdout);

  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  const double max_s = absl::GetFlag(FLAGS_max_minutes) * 60.0;
  const auto t0 = std::chrono::steady_clock::now();
  const double elapsed0 = prog.elapsed_s;
  const int64_t step0 = prog.step;
  auto now_s = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  double ema = -1, ema_recall = -1;
  std::string stopped = "done";

  auto validate = [&] {
    const auto v = Validate(*model, valid, rspec, absl::GetFlag(FLAGS_eval_windows),
                            rbatch > 0 ? absl::GetFlag(FLAGS_eval_episodes) : 0, T, bos, eos);
    prog.best_val = std::min(prog.best_val, v.loss);
    std::printf("valid step %lld: loss %.4f (ppl %.1f), recall accuracy %.3f\n",
                (long long)prog.step, v.loss, std::exp(v.loss), v.recall_acc);
    std::fflush(stdout);
  };

  // 4. The loop. Each step's data comes from its own seed, so a resumed run sees what an
  // uninterrupted one would have.
  const double budget_s = absl::GetFlag(FLAGS_budget_minutes) * 60.0;
  const int64_t warmup = absl::GetFlag(FLAGS_warmup);
  // Fraction of the run behind us: by steps, or by the time budget when that is further along
  // (measured from the end of warm-up, so warm-up always completes).
  auto done_frac = [&] {
    double f = static_cast<double>(prog.step - warmup) / std::max<int64_t>(1, steps - warmup);
    if (budget_s > 0) f = std::max(f, (elapsed0 + now_s()) / budget_s);
    return f;
  };
  while (prog.step < steps) {
    if (g_stop) { stopped = "signal"; break; }
    if (max_s > 0 && now_s() > max_s) { stopped = "max_minutes"; break; }
    if (budget_s > 0 && prog.step >= warmup && elapsed0 + now_s() >= budget_s) {
      stopped = "budget";
      break;
    }
    std::mt19937_64 rng(absl::GetFlag(FLAGS_seed) * 1000003ULL + prog.step);
    const double lr = LearningRate(prog.step, done_frac(), warmup, peak,
                                   absl::GetFlag(FLAGS_min_lr_ratio));
    for (auto& g : opt.param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);

    opt.zero_grad();
    auto x = SampleTextWindows(train, batch, T, bos, eos, absl::GetFlag(FLAGS_bos_prob), rng);
    auto [text_sum, text_n] = MaskedLossSum(model->ForwardTrain(x), x, torch::ones({batch, T - 1}));
    torch::Tensor loss_sum = text_sum;
    int64_t n = text_n;
    double recall_loss = -1;
    if (rbatch > 0) {
      auto rb = MakeRecallBatch(rspec, train, rbatch, bos, rng);
      auto logits = model->ForwardTrain(rb.tokens);
      const double w = absl::GetFlag(FLAGS_recall_weight);
      auto [rs, rn] = MaskedLossSum(logits, rb.tokens, rb.mask + (w - 1.0) * rb.value_mask);
      auto [vs, vn] = MaskedLossSum(logits.detach(), rb.tokens, rb.value_mask);
      recall_loss = vs.item<double>() / vn;
      loss_sum = loss_sum + rs;
      n += rn;
    }
    auto loss = loss_sum / static_cast<double>(n);
    loss.backward();
    torch::nn::utils::clip_grad_norm_(params, absl::GetFlag(FLAGS_clip));
    opt.step();

    const double text_loss = text_sum.item<double>() / text_n;
    if (!std::isfinite(text_loss)) return absl::InternalError("loss is not finite");
    ema = ema < 0 ? text_loss : 0.95 * ema + 0.05 * text_loss;
    if (recall_loss >= 0) ema_recall = ema_recall < 0 ? recall_loss : 0.95 * ema_recall + 0.05 * recall_loss;
    ++prog.step;
    prog.tokens += step_tokens;
    prog.elapsed_s = elapsed0 + now_s();

    if (prog.step % absl::GetFlag(FLAGS_log_every) == 0 || prog.step == steps) {
      const double rate = (prog.step - step0) * step_tokens / std::max(1e-9, now_s());
      double eta_s = (steps - prog.step) * step_tokens / std::max(1e-9, rate);
      if (budget_s > 0) eta_s = std::min(eta_s, budget_s - prog.elapsed_s);
      std::printf("step %lld/%lld (%.1f%%) | loss %.4f | recall-value loss %.3f | lr %.2e | "
                  "%.0f tok/s | elapsed %s | ETA %s\n",
                  (long long)prog.step, (long long)steps, 100.0 * prog.step / steps, ema,
                  ema_recall, lr, rate, FormatDuration(prog.elapsed_s).c_str(),
                  FormatDuration(eta_s).c_str());
      std::fflush(stdout);
    }
    if (prog.step % absl::GetFlag(FLAGS_eval_every) == 0 || prog.step == steps) validate();
    if (prog.step % absl::GetFlag(FLAGS_ckpt_every) == 0 || prog.step == steps) {
      RETURN_IF_ERROR(SaveCheckpoint(work, config, *model, opt, prog));
    }
  }
  if (prog.step > step0 && prog.step % absl::GetFlag(FLAGS_ckpt_every) != 0) {
    RETURN_IF_ERROR(SaveCheckpoint(work, config, *model, opt, prog));
  }
  if (stopped == "budget") validate();
  if (stopped != "done") std::printf("stopped (%s) at step %lld\n", stopped.c_str(), (long long)prog.step);
  return do_export(stopped);
}

}  // namespace
}  // namespace ttt::train

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("ttt-train: train a model with In-Place TTT (docs/model.md)");
  absl::ParseCommandLine(argc, argv);
  absl::Status s = ttt::train::Run();
  if (!s.ok()) {
    std::fprintf(stderr, "ttt-train: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
