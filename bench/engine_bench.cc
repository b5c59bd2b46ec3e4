// Engine throughput, printed as ratios against baselines measured in the same run:
// TTT on vs. off, batched (8 sequences) vs. one, achieved FLOP/s vs. this machine's sgemm peak,
// bf16 vs. f32, and the engine vs. the plain PyTorch reference (tests/reference) at batch 1.
// The session-scaling table (issue 11) times decode steps and streaming pieces for each count in
// --sessions against one session, TTT on and off, and the two down-projection formulations.
// The roofline table (issue 26, bench/roofline.h) puts every decode and ingest row against what
// this machine allows: its single-thread read bandwidth and sgemm peak, measured in the same run.
//
//   engine_bench [--shape=small|test|shipped|large] [--tokens=N] [--threads=N]
//   [--python=/usr/bin/python3]
//                [--device=cpu|cuda] [--sessions=1,4,16,64]
//                [--only=all|scaling|ops|decode|ingest|kernels|digest|fork|compact|cache]
//                [--clock=wall|cpu] [--model=DIR] [--chunk=N] [--valid=TOKENS]
//
// --clock=cpu times with the process's CPU time instead of the wall clock: with --threads=1 on a
// machine shared with other jobs it is far less sensitive to time slicing (it still sees cache
// and memory-bandwidth contention). --model=DIR also prints the bytes a resident session of that
// model holds. --chunk=N serves the shape at another TTT chunk (the cost of updating more often).
//
// --only=ops also lists the operations of a one-session decode step by name; --only=decode times
// 512 decode steps per session count (steadier than the scaling table's 32); --only=ingest one
// call of --tokens tokens, TTT on and off; --only=kernels the step's per-session kernels
// (attention after --tokens tokens, the delta term) against the read bandwidth, and the short
// step's dense products against OpenBLAS (bench/kernel_rows.h). --only=fork: memory and time per
// fork of a session after --tokens tokens (1,000 copy-on-write forks; with a 256-token ingest after
// each), against the deep copy (issue 27; with --model=DIR for that model too). --only=compact:
// bytes per session and reload latency of each tier (fp32, compact bf16, a file) after --tokens
// tokens, and with --model=DIR --valid=TOKENS the loss cost of compaction on that split
// (bench/compact_rows.h).
// --only=cache: a document of --tokens tokens read through the session manager with the state
// cache off, by the first reader with it on (computed and cached), and by the next (adopted)
// (issue 27; with --model=DIR for that model too; bench/cache_rows.h; not engine-only builds).
// --only=digest prints
// a SHA-256 of the log-probabilities and final states of a fixed mix of calls (decode steps, short
// and long pieces, several sessions per call): two builds of the engine that print the same
// digest compute bit-identical results on this machine (with --model=DIR, for that model too).
//
// Benchmarks never assert on time; they print figures. Results go to bench/RESULTS.md.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <unistd.h>

#include <time.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench/cache_rows.h"
#include "bench/compact_rows.h"
#include "bench/kernel_rows.h"
#include "bench/roofline.h"
#include "engine/internal/model_tensors.h"
#include "engine/model.h"
#include "engine/testing/random_weights.h"
#include "util/malloc_tuning.h"
#include "util/sha256.h"

namespace ttt::engine {
namespace {

using Clock = std::chrono::steady_clock;

struct Flags {
  std::string shape = "small";
  int64_t tokens = 1024;
  std::string python = "/usr/bin/python3";
  std::string device = "cpu";
  int threads = 0;                             // 0 = the number of cores
  std::vector<int> sessions = {1, 4, 16, 64};  // session counts of the scaling table
  std::string only = "all";                    // "scaling": the session-scaling table alone
  std::string model;                           // a model folder whose session bytes to print
  int64_t chunk = 0;                           // > 0: the TTT chunk instead of the shape's
  std::string valid;                           // --only=compact: token ids of a validation split
  std::string delta_dtype;  // --ttt_delta_dtype: float32 or bfloat16 instead of the shape's fp32
};

bool cpu_clock = false;  // --clock=cpu

// Seconds on the benchmark's clock (wall, or this process's CPU time with --clock=cpu).
double Now() {
  if (!cpu_clock) return std::chrono::duration<double>(Clock::now().time_since_epoch()).count();
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// The run's roofline (measured in Run before any timed row; null with --only=ops or digest and
// off the CPU, where the bandwidth probe would measure the host, not the device).
bench::Roofline* roofline = nullptr;

// Records a measured row in the roofline table: `rate` tokens/s of `sessions` streams, each fed
// `tokens` tokens from position `start` in pieces of `piece`, TTT updating or not.
void AddRoofline(const std::string& label, double rate, const ModelConfig& c, int sessions,
                 int64_t start, int64_t tokens, int64_t piece, bool ttt) {
  if (roofline == nullptr) return;
  roofline->Add(label, rate, sessions * tokens / rate,
                bench::RunCosts(c, sessions, start, tokens, piece, ttt),
                sessions * std::min(piece, tokens), c);
}

std::vector<int> ParseList(const std::string& text) {
  std::vector<int> out;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) out.push_back(std::atoi(item.c_str()));
  return out;
}

Flags ParseFlags(int argc, char** argv) {
  Flags flags;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&](const char* name) -> const char* {
      std::string prefix = std::string("--") + name + "=";
      return arg.rfind(prefix, 0) == 0 ? argv[i] + prefix.size() : nullptr;
    };
    if (auto v = value("shape"))
      flags.shape = v;
    else if (auto v = value("tokens"))
      flags.tokens = std::atoll(v);
    else if (auto v = value("python"))
      flags.python = v;
    else if (auto v = value("device"))
      flags.device = v;
    else if (auto v = value("threads"))
      flags.threads = std::atoi(v);
    else if (auto v = value("sessions"))
      flags.sessions = ParseList(v);
    else if (auto v = value("only"))
      flags.only = v;
    else if (auto v = value("clock"))
      cpu_clock = std::string(v) == "cpu";
    else if (auto v = value("model"))
      flags.model = v;
    else if (auto v = value("chunk"))
      flags.chunk = std::atoll(v);
    else if (auto v = value("valid"))
      flags.valid = v;
    else if (auto v = value("ttt_delta_dtype"))
      flags.delta_dtype = v;
    else {
      std::cerr << "unknown flag " << arg << "\n";
      std::exit(2);
    }
  }
  return flags;
}

// A model shaped like a small real one (GPT-2-small-like widths), the golden test's, or a larger
// one for GPUs (24 layers, d_model 2048: ~1.3 B parameters, 5 GiB in f32).
ModelConfig Shape(const std::string& name) {
  ModelConfig c;
  c.model_type = "llama";
  c.ttt_mode = true;
  c.ttt_lr = 0.01;
  c.ttt_proj = true;
  c.rms_norm_eps = 1e-5;
  if (name == "test") {
    c.vocab_size = 97, c.hidden_size = 64, c.intermediate_size = 128, c.num_hidden_layers = 3;
    c.num_attention_heads = 4, c.num_key_value_heads = 2, c.head_dim = 16;
    c.ttt_layers = {0, 2}, c.ttt_chunk = 8;
  } else if (name == "shipped") {  // the dimensions and TTT settings of models/ttt-brown
    c.vocab_size = 4096, c.hidden_size = 128, c.intermediate_size = 384, c.num_hidden_layers = 4;
    c.num_attention_heads = 2, c.num_key_value_heads = 2, c.head_dim = 64;
    c.ttt_layers = {1, 3}, c.ttt_chunk = 16, c.sliding_window = 64, c.tie_word_embeddings = true;
    c.ttt_target = TttTarget::kInputEmbed, c.ttt_clip = 5.0, c.ttt_delta_cap = 8.5;
  } else if (name == "large") {
    c.vocab_size = 32000, c.hidden_size = 2048, c.intermediate_size = 5632;
    c.num_hidden_layers = 24, c.num_attention_heads = 16, c.num_key_value_heads = 8;
    c.head_dim = 128, c.ttt_layers = {5, 11, 17, 23}, c.ttt_chunk = 256;
  } else {
    c.vocab_size = 8000, c.hidden_size = 768, c.intermediate_size = 2048, c.num_hidden_layers = 6;
    c.num_attention_heads = 12, c.num_key_value_heads = 4, c.head_dim = 64;
    c.ttt_layers = {0, 3}, c.ttt_chunk = 256;
  }
  return c;
}

// Scaled like a trained model's (std 0.02, unit norms), so activations stay in range.
NamedTensors RandomWeights(const ModelConfig& c) {
  testing::RandomWeightOptions options;
  options.seed = 0;
  options.embed_std = 0.5;
  options.weight_std = 0.02;
  options.norm_jitter = 0;
  options.ttt_proj_std = 1.0 / std::sqrt(double(c.hidden_size));
  return testing::RandomWeights(c, options);
}

// Matmul FLOPs of one token at context length `context` (the attention term) with or without TTT.
double FlopsPerToken(const ModelConfig& c, double context, bool ttt) {
  const double d = c.hidden_size, f = c.intermediate_size, q = c.num_attention_heads * c.head_dim,
               kv = c.num_key_value_heads * c.head_dim;
  double flops = c.num_hidden_layers * 2 * (d * q + 2 * d * kv + q * d + 3 * d * f);
  flops += c.num_hidden_layers * 4 * context * q;  // scores and weighted values
  flops += 2 * d * c.vocab_size;
  // Per TTT layer: the fast-weight term z @ delta^T, and per chunk V^T Z and conv_out @ W_target.
  if (ttt) flops += c.ttt_layers.size() * (2 * d * f + 2 * d * f + 2 * d * d);
  return flops;
}

// Best-of-`repeats` seconds for `fn`, after one warm-up call.
double Time(const std::function<void()>& fn, int repeats = 3) {
  fn();
  double best = 1e30;
  for (int i = 0; i < repeats; ++i) {
    const double start = Now();
    fn();
    best = std::min(best, Now() - start);
  }
  return best;
}

double SgemmGflops(int64_t m, int64_t k, int64_t n) {
  at::Tensor a = at::randn({m, k}), b = at::randn({k, n});
  const double seconds = Time([&] { at::mm(a, b); }, 5);
  return 2.0 * m * k * n / seconds / 1e9;
}

std::vector<int32_t> Tokens(int64_t n, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> out(n);
  for (auto& t : out) t = static_cast<int32_t>(rng() % vocab);
  return out;
}

// Tokens per second for `sequences` fresh streams, each fed `tokens` in pieces of `piece`.
double IngestRate(const Model& model, int sequences, int64_t tokens, int64_t piece,
                  int repeats = 2) {
  const auto stream = Tokens(tokens, model.config().vocab_size, 1);
  const double seconds = Time(
      [&] {
        std::vector<SequenceState> states;
        for (int s = 0; s < sequences; ++s) states.push_back(model.NewSequence());
        for (int64_t at = 0; at < tokens; at += piece) {
          std::vector<IngestItem> items;
          for (auto& state : states) {
            items.push_back(
                {&state, {stream.begin() + at, stream.begin() + std::min(tokens, at + piece)}});
          }
          auto result = model.Ingest(absl::MakeSpan(items));
          if (!result.ok()) {
            std::cerr << result.status() << "\n";
            std::exit(1);
          }
        }
      },
      repeats);
  return sequences * tokens / seconds;
}

void Check(const absl::StatusOr<std::vector<IngestLogProbs>>& result) {
  if (!result.ok()) {
    std::cerr << result.status() << "\n";
    std::exit(1);
  }
}

// Tokens per second of `steps` decode steps (one token per session per step) for `sessions`
// sessions that each start from a copy of `prefix` (cloned outside the timed region). Best of
// `repeats` after one warm-up.
double DecodeRate(const Model& model, const SequenceState& prefix, int sessions, int64_t steps,
                  int repeats) {
  const auto stream = Tokens(steps, model.config().vocab_size, 2);
  double best = 1e30;
  for (int r = 0; r <= repeats; ++r) {
    std::vector<SequenceState> states;
    for (int s = 0; s < sessions; ++s) states.push_back(prefix.Clone());
    const double start = Now();
    for (int64_t t = 0; t < steps; ++t) {
      std::vector<IngestItem> items;
      for (auto& state : states) items.push_back({&state, {stream[t]}});
      Check(model.Ingest(absl::MakeSpan(items)));
    }
    const double seconds = Now() - start;
    if (r > 0) best = std::min(best, seconds);
  }
  return sessions * steps / best;
}

// Bytes a resident session holds (SequenceState::MemoryBytes: the buffers, spare rows included)
// after `prefix` tokens in one piece and then `steps` decode steps.
int64_t SessionBytes(const Model& model, int64_t prefix, int64_t steps) {
  SequenceState state = model.NewSequence();
  std::vector<IngestItem> items{{&state, Tokens(prefix, model.config().vocab_size, 4)}};
  Check(model.Ingest(absl::MakeSpan(items)));
  for (int32_t token : Tokens(steps, model.config().vocab_size, 5)) {
    std::vector<IngestItem> step{{&state, {token}}};
    Check(model.Ingest(absl::MakeSpan(step)));
  }
  return state.HeldBytes();
}

// Bytes of the distinct buffers `states` hold (a buffer forks share, once).
int64_t DistinctBytes(const std::vector<const SequenceState*>& states) {
  std::set<uintptr_t> seen;
  int64_t bytes = 0;
  for (const SequenceState* state : states) {
    for (const HeldBuffer& b : state->HeldBuffers()) {
      if (seen.insert(b.identity).second) bytes += b.bytes;
    }
  }
  return bytes;
}

// Issue 27's fork rows: memory and time per fork of an adapted session (--tokens tokens), without
// and with a 256-token ingest after it, for the copy-on-write Fork against the deep copy (Clone,
// what a fork was before). Memory is what the copies add to the parent, shared buffers once.
void ForkTable(const std::string& label, const Model& model, int64_t prefix) {
  const int64_t vocab = model.config().vocab_size;
  SequenceState parent = model.NewSequence();
  std::vector<IngestItem> first{{&parent, Tokens(prefix, vocab, 4)}};
  Check(model.Ingest(absl::MakeSpan(first)));
  const int64_t one = parent.HeldBytes();
  std::printf("\n%s, parent after %lld tokens: %.2f MiB\n", label.c_str(), (long long)prefix,
              one / 1048576.0);
  std::printf(
      "| copy | copies | then ingests | added per copy | total vs parent | time per copy "
      "|\n|---|---|---|---|---|---|\n");
  auto row = [&](const char* kind, int copies, int64_t ingest) {
    std::vector<SequenceState> states;
    states.reserve(copies);
    const double start = Now();
    for (int i = 0; i < copies; ++i) {
      states.push_back(kind[0] == 'f' ? parent.Fork() : parent.Clone());
      if (ingest > 0) {
        std::vector<IngestItem> items{{&states.back(), Tokens(ingest, vocab, 100 + i)}};
        Check(model.Ingest(absl::MakeSpan(items)));
      }
    }
    const double seconds = (Now() - start) / copies;
    std::vector<const SequenceState*> all{&parent};
    for (const SequenceState& s : states) all.push_back(&s);
    const int64_t total = DistinctBytes(all);
    std::printf("| %s | %d | %lld tokens | %.3f MiB | %.2fx | %.3f ms |\n", kind, copies,
                (long long)ingest, (total - one) / double(copies) / 1048576.0, total / double(one),
                seconds * 1e3);
  };
  row("fork (copy-on-write)", 1000, 0);
  row("clone (deep copy)", 10, 0);
  row("fork (copy-on-write)", 8, 256);
  row("clone (deep copy)", 8, 256);
  // What reading a fork's increments costs a decode step (internal/fast_weight.h), against the
  // dense delta of a deep copy that read the same 256 tokens.
  SequenceState fork = parent.Fork(), copy = parent.Clone();
  for (SequenceState* s : {&fork, &copy}) {
    std::vector<IngestItem> items{{s, Tokens(256, vocab, 7)}};
    Check(model.Ingest(absl::MakeSpan(items)));
  }
  auto step_ms = [&](SequenceState& s) {
    const std::vector<int32_t> steps = Tokens(32, vocab, 8);
    const double start = Now();
    for (int32_t token : steps) {
      std::vector<IngestItem> step{{&s, {token}}};
      Check(model.Ingest(absl::MakeSpan(step)));
    }
    return (Now() - start) / steps.size() * 1e3;
  };
  step_ms(copy);  // warms the caches and the workspace, so neither pays for the first steps
  const double on_fork = step_ms(fork), on_copy = step_ms(copy);
  std::printf("| decode step after the 256 tokens | fork: %.3f ms | clone: %.3f ms | %.3f |\n",
              on_fork, on_copy, on_fork / on_copy);
}

void PrintSessionBytes(const std::string& label, const Model& model) {
  for (int64_t prefix : {256, 4096}) {
    std::printf("| %s | %lld + 32 decode steps | %.2f MiB |\n", label.c_str(), (long long)prefix,
                SessionBytes(model, prefix, 32) / 1048576.0);
  }
}

// LibTorch operator calls (every dispatched op, nested ones included, via a RecordFunction
// callback) per decode step for `sessions` sessions starting from copies of `prefix`: the
// machine-independent measure of how a step's operation count grows with the sessions in it.
constexpr int kOpSteps = 2;  // decode steps counted per figure
std::atomic<int64_t> op_calls{0};
std::map<std::string, int64_t>* op_names = nullptr;  // when set: calls per operation name
std::mutex op_names_mu;
double OpsPerDecodeStep(const Model& model, const SequenceState& prefix, int sessions) {
  std::vector<SequenceState> states;
  for (int s = 0; s < sessions; ++s) states.push_back(prefix.Clone());
  const auto stream = Tokens(kOpSteps + 1, model.config().vocab_size, 6);
  // One step first: the copies are compact, and the first step moves them into buffers with
  // spare rows (once per session, not per step).
  std::vector<IngestItem> first;
  for (auto& state : states) first.push_back({&state, {stream[kOpSteps]}});
  Check(model.Ingest(absl::MakeSpan(first)));
  auto handle = at::addGlobalCallback(at::RecordFunctionCallback(
      [](const at::RecordFunction& fn) -> std::unique_ptr<at::ObserverContext> {
        op_calls.fetch_add(1, std::memory_order_relaxed);
        if (op_names != nullptr) {
          std::lock_guard<std::mutex> lock(op_names_mu);
          ++(*op_names)[fn.name()];
        }
        return nullptr;
      }));
  op_calls = 0;
  for (int t = 0; t < kOpSteps; ++t) {
    std::vector<IngestItem> items;
    for (auto& state : states) items.push_back({&state, {stream[t]}});
    Check(model.Ingest(absl::MakeSpan(items)));
  }
  at::removeCallback(handle);
  return static_cast<double>(op_calls.load()) / kOpSteps;
}

// Operations of one decode step of `sessions` sessions (TTT on) by name, most called first.
void PrintOpNames(const Model& model, const SequenceState& prefix, int sessions) {
  std::map<std::string, int64_t> names;
  op_names = &names;
  const double total = OpsPerDecodeStep(model, prefix, sessions);
  op_names = nullptr;
  std::vector<std::pair<int64_t, std::string>> sorted;
  for (const auto& [name, calls] : names) sorted.push_back({calls, name});
  std::sort(sorted.rbegin(), sorted.rend());
  std::printf(
      "\n| operation (decode step, %d session(s), TTT on: %.0f in all) | calls per step |\n"
      "|---|---|\n",
      sessions, total);
  for (const auto& [calls, name] : sorted)
    std::printf("| %s | %.1f |\n", name.c_str(), double(calls) / kOpSteps);
}

// The session-scaling table: decode steps after a prefix that completed a chunk (so the fast
// weights are live and the cache is not empty) and streaming pieces from fresh streams, for each
// session count against one session in this run, TTT on and off.
void ScalingTable(const Flags& flags, const Model& ttt, const Model& plain) {
  const ModelConfig& c = ttt.config();
  const int64_t prefix_tokens = c.ttt_chunk + c.ttt_chunk / 4, steps = 32;
  const int64_t piece = std::max<int64_t>(1, c.ttt_chunk / 4), stream_tokens = 2 * piece;
  auto prefix_of = [&](const Model& model) {
    SequenceState state = model.NewSequence();
    std::vector<IngestItem> items{{&state, Tokens(prefix_tokens, c.vocab_size, 3)}};
    Check(model.Ingest(absl::MakeSpan(items)));
    return state;
  };
  const SequenceState prefix_on = prefix_of(ttt), prefix_off = prefix_of(plain);
  std::printf(
      "\n| sessions | LibTorch ops per decode step, TTT on | per session | TTT off | per session "
      "|\n"
      "|---|---|---|---|---|\n");
  for (int n : flags.sessions) {
    const double on = OpsPerDecodeStep(ttt, prefix_on, n),
                 off = OpsPerDecodeStep(plain, prefix_off, n);
    std::printf("| %d | %.0f | %.1f | %.0f | %.1f |\n", n, on, on / n, off, off / n);
    std::fflush(stdout);
  }
  if (flags.only == "ops") {
    PrintOpNames(ttt, prefix_on, flags.sessions.front());
    return;
  }
  std::printf(
      "\n| sessions | decode TTT on | ratio vs 1 | decode TTT off | ratio vs 1 | "
      "TTT on/off | pieces of %lld, TTT on | ratio vs 1 | pieces, TTT off | ratio vs 1 |\n"
      "|---|---|---|---|---|---|---|---|---|---|\n",
      (long long)piece);
  double base[4] = {0, 0, 0, 0};
  for (int n : flags.sessions) {
    const int repeats = n >= 16 ? 1 : 2;
    const double rates[4] = {DecodeRate(ttt, prefix_on, n, steps, repeats),
                             DecodeRate(plain, prefix_off, n, steps, repeats),
                             IngestRate(ttt, n, stream_tokens, piece, repeats),
                             IngestRate(plain, n, stream_tokens, piece, repeats)};
    for (int i = 0; i < 4; ++i) {
      if (base[i] == 0) base[i] = rates[i];
    }
    const std::string sessions = std::to_string(n) + (n == 1 ? " session" : " sessions");
    AddRoofline("decode, " + sessions + ", TTT on", rates[0], c, n, prefix_tokens, steps, 1, true);
    AddRoofline("decode, " + sessions + ", TTT off", rates[1], c, n, prefix_tokens, steps, 1,
                false);
    AddRoofline("pieces of " + std::to_string(piece) + ", " + sessions + ", TTT on", rates[2], c, n,
                0, stream_tokens, piece, true);
    AddRoofline("pieces of " + std::to_string(piece) + ", " + sessions + ", TTT off", rates[3], c,
                n, 0, stream_tokens, piece, false);
    std::printf(
        "| %d | %.0f tok/s | %.2f | %.0f tok/s | %.2f | %.3f | %.0f tok/s | %.2f | %.0f tok/s "
        "| %.2f |\n",
        n, rates[0], rates[0] / base[0], rates[1], rates[1] / base[1], rates[0] / rates[1],
        rates[2], rates[2] / base[2], rates[3], rates[3] / base[3]);
    std::fflush(stdout);
  }
  std::printf(
      "(decode: %lld steps after a %lld-token prefix; ratios vs the first row, %d session(s))\n",
      (long long)steps, (long long)prefix_tokens, flags.sessions.front());
}

// Decode steps alone, longer than the scaling table's (512 steps, best of 3): the steadier
// figure for one engine change against another, and the loop to profile.
void DecodeTable(const Flags& flags, const Model& ttt, const Model& plain) {
  const ModelConfig& c = ttt.config();
  const int64_t prefix_tokens = c.ttt_chunk + c.ttt_chunk / 4, steps = 512;
  std::printf("\n| sessions | decode TTT on | TTT off | on/off |\n|---|---|---|---|\n");
  for (int n : flags.sessions) {
    double rates[2];
    for (int on = 1; on >= 0; --on) {
      const Model& model = on ? ttt : plain;
      SequenceState prefix = model.NewSequence();
      std::vector<IngestItem> items{{&prefix, Tokens(prefix_tokens, c.vocab_size, 3)}};
      Check(model.Ingest(absl::MakeSpan(items)));
      rates[on] = DecodeRate(model, prefix, n, steps, 3);
      AddRoofline(
          "decode (512 steps), " + std::to_string(n) + " session(s), TTT " + (on ? "on" : "off"),
          rates[on], c, n, prefix_tokens, steps, 1, on);
    }
    std::printf("| %d | %.0f tok/s | %.0f tok/s | %.3f |\n", n, rates[1], rates[0],
                rates[1] / rates[0]);
    std::fflush(stdout);
  }
}

// One ingest of --tokens tokens in one call (a served step is up to 512), TTT on and off, best
// of 5: the per-chunk TTT work of one call against the same model without it.
void IngestTable(const Flags& flags, const Model& ttt, const Model& plain) {
  const ModelConfig& c = ttt.config();
  const int64_t n = flags.tokens;
  const double on = IngestRate(ttt, 1, n, n, 5), off = IngestRate(plain, 1, n, n, 5);
  std::printf(
      "\n| ingest %lld tokens in one call, chunk %lld | TTT on | TTT off | on/off |\n"
      "|---|---|---|---|\n| | %.0f tok/s | %.0f tok/s | %.3f |\n",
      (long long)n, (long long)c.ttt_chunk, on, off, on / off);
  const std::string label = "ingest " + std::to_string(n) + " tokens in one call, TTT ";
  AddRoofline(label + "on", on, c, 1, 0, n, n, true);
  AddRoofline(label + "off", off, c, 1, 0, n, n, false);
}

// The down projection of a TTT layer for B decode rows, two ways (DESIGN.md section 3): the
// shared W_down^(0) product over all rows plus one batched z @ delta^T over the B sessions'
// deltas, against one batched product with each session's full W_down = W_down^(0) + delta.
void DownProjectionFormulations(const Flags& flags, const ModelConfig& c) {
  const int64_t d = c.hidden_size, f = c.intermediate_size;
  std::printf(
      "\n| sessions | shared W0 + per-session delta | per-session full W_down | "
      "full / shared |\n|---|---|---|---|\n");
  at::Tensor w0 = at::randn({d, f}) * 0.02;
  for (int n : flags.sessions) {
    at::Tensor z = at::randn({n, f}), deltas = at::randn({n, d, f}) * 0.01;
    at::Tensor full = deltas + w0;  // what the full form would keep per session
    const double shared = Time(
        [&] { at::Tensor out = at::mm(z, w0.t()) + at::bmm(deltas, z.unsqueeze(2)).squeeze(2); });
    const double per_session = Time([&] { at::bmm(full, z.unsqueeze(2)); });
    std::printf("| %d | %.3f ms | %.3f ms | %.2f |\n", n, shared * 1e3, per_session * 1e3,
                per_session / shared);
  }
}

// SHA-256 of every log-probability of a fixed mix of calls on `model` and of the final states:
// three streams fed, in turn, a long piece (several chunks, the per-item path), a piece longer
// than the varlen limit, short pieces and decode steps, alone and together in one call.
std::string Digest(const Model& model) {
  util::Sha256 hash;
  std::vector<SequenceState> states;
  for (int s = 0; s < 3; ++s) states.push_back(model.NewSequence());
  const int64_t chunk = std::max<int64_t>(model.config().ttt_chunk, 1);
  // Per call: the tokens each stream gets (0: the stream sits the call out).
  const std::vector<std::vector<int64_t>> calls = {{3 * chunk + 5, 0, 1},
                                                   {1, 17, 1},
                                                   {1, 1, 5},
                                                   {chunk, 1, 1},
                                                   {0, 3, 0},
                                                   {2, 2, 2},
                                                   {1, 1, 1},
                                                   {1, 1, 1},
                                                   {chunk / 2 + 1, 1, 1},
                                                   {1, 1, 2 * chunk + 3}};
  uint32_t seed = 100;
  for (int round = 0; round < 3; ++round) {
    for (const std::vector<int64_t>& counts : calls) {
      std::vector<IngestItem> items;
      for (size_t s = 0; s < counts.size(); ++s) {
        if (counts[s] > 0) {
          items.push_back({&states[s], Tokens(counts[s], model.config().vocab_size, ++seed)});
        }
      }
      auto result = model.Ingest(absl::MakeSpan(items));
      Check(result);
      for (const IngestLogProbs& logprobs : *result) {
        hash.Update(logprobs.data(), logprobs.size() * sizeof(float));
      }
    }
  }
  for (const SequenceState& state : states) {
    for (const auto& [name, tensor] : StateTensors(state)) {
      const at::Tensor bytes = tensor.contiguous().cpu();
      hash.Update(name);
      hash.Update(bytes.data_ptr(), bytes.nbytes());
    }
  }
  return hash.HexFinal();
}

void PrintDigests(const std::string& label, const Model& ttt, const Model& plain) {
  std::printf("digest %s, TTT on:  %s\ndigest %s, TTT off: %s\n", label.c_str(),
              Digest(ttt).c_str(), label.c_str(), Digest(plain).c_str());
}

std::unique_ptr<Model> Build(const ModelConfig& config, const NamedTensors& weights,
                             ModelOptions options) {
  auto model = ModelFromWeights(config, weights, options);
  if (!model.ok()) {
    std::cerr << model.status() << "\n";
    std::exit(1);
  }
  return std::move(model).value();
}

// Runs the PyTorch reference on the same weights; returns its tokens/s (0 when unavailable).
double PythonReferenceRate(const Flags& flags, const ModelConfig& config,
                           const NamedTensors& weights) {
  namespace fs = std::filesystem;
  fs::path dir = fs::temp_directory_path() / ("ttt-bench-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::ofstream(dir / "config.json") << ModelConfigToJson(config);
  if (!WriteSafetensors(dir / "model.safetensors", weights).ok()) return 0;
  const fs::path script = TTT_PYTHON_REFERENCE_BENCH;
  std::ostringstream cmd;
  cmd << flags.python << " " << script << " --model " << dir << " --tokens " << flags.tokens
      << " --threads " << at::get_num_threads();
  std::string output;
  if (FILE* pipe = ::popen(cmd.str().c_str(), "r")) {
    char buffer[256];
    while (std::fgets(buffer, sizeof(buffer), pipe)) output += buffer;
    ::pclose(pipe);
  }
  fs::remove_all(dir);
  const auto pos = output.find("tokens_per_second=");
  return pos == std::string::npos ? 0 : std::atof(output.c_str() + pos + 18);
}

int Run(const Flags& flags) {
  // OpenMP may default to one thread on a busy machine; say how many we use.
  SetCpuThreads(flags.threads);
  ModelConfig config = Shape(flags.shape);
  if (flags.chunk > 0) config.ttt_chunk = flags.chunk;
  if (!flags.delta_dtype.empty()) {  // the TTT model's deltas (and the roofline's delta bytes)
    auto delta_dtype = ParseTttDeltaDtype(flags.delta_dtype, "--ttt_delta_dtype");
    if (!delta_dtype.ok()) {
      std::cerr << delta_dtype.status() << "\n";
      return 2;
    }
    config.ttt_delta_dtype = *delta_dtype;
  }
  const NamedTensors weights = RandomWeights(config);
  const int64_t n = flags.tokens;
  std::printf(
      "# engine_bench shape=%s layers=%lld d_model=%lld d_ff=%lld vocab=%lld chunk=%lld "
      "ttt_layers=%zu tokens=%lld threads=%d device=%s deltas=%s\n",
      flags.shape.c_str(), (long long)config.num_hidden_layers, (long long)config.hidden_size,
      (long long)config.intermediate_size, (long long)config.vocab_size,
      (long long)config.ttt_chunk, config.ttt_layers.size(), (long long)n, at::get_num_threads(),
      flags.device.c_str(),
      config.ttt_delta_dtype == TttDeltaDtype::kBFloat16 ? "bfloat16" : "float32");

  auto ttt = Build(config, weights, {.device = flags.device});
  auto plain = Build(config, weights, {.device = flags.device, .ttt_lr = 0.0});
  if (flags.only == "digest") {
    PrintDigests(flags.shape, *ttt, *plain);
    if (!flags.model.empty()) {
      auto loaded = Model::Load(flags.model, {.device = flags.device});
      auto loaded_plain = Model::Load(flags.model, {.device = flags.device, .ttt_lr = 0.0});
      if (!loaded.ok() || !loaded_plain.ok()) {
        std::cerr << (loaded.ok() ? loaded_plain.status() : loaded.status()) << "\n";
        return 1;
      }
      PrintDigests(flags.model, **loaded, **loaded_plain);
    }
    return 0;
  }
  if (flags.only == "compact") {  // bench/compact_rows.h
    bench::CompactTable("bench shape " + flags.shape, *ttt, n, 30, Now);
    if (!flags.model.empty()) {
      auto loaded = Model::Load(flags.model, {.device = flags.device});
      if (!loaded.ok()) {
        std::cerr << loaded.status() << "\n";
        return 1;
      }
      bench::CompactTable(flags.model, **loaded, n, 30, Now);
      if (!flags.valid.empty()) bench::CompactQuality(**loaded, flags.valid, 1024);
    }
    return 0;
  }
  if (flags.only == "cache") {
#ifdef TTT_BENCH_CACHE_ROWS
    bench::CacheTableHeader();
    bench::CacheTable("bench shape " + flags.shape, *ttt, n, 3, Now);
    if (!flags.model.empty()) {
      auto loaded = Model::Load(flags.model, {.device = flags.device});
      if (!loaded.ok()) {
        std::cerr << loaded.status() << "\n";
        return 1;
      }
      bench::CacheTable(flags.model, **loaded, n, 5, Now);
    }
    return 0;
#else
    std::cerr << "--only=cache needs the session library: not in an engine-only build\n";
    return 2;
#endif
  }
  if (flags.only == "fork") {
    SetForkIncrements(true);  // the rows measure the factored forks (ttt-serve --fork_increments)
    ForkTable("bench shape " + flags.shape, *ttt, n);
    if (!flags.model.empty()) {
      auto loaded = Model::Load(flags.model, {.device = flags.device});
      if (!loaded.ok()) {
        std::cerr << loaded.status() << "\n";
        return 1;
      }
      ForkTable(flags.model, **loaded, n);
    }
    return 0;
  }
  if (flags.only != "ops") {
    std::printf("\n| model | tokens | bytes per resident session |\n|---|---|---|\n");
    PrintSessionBytes("bench shape " + flags.shape, *ttt);
  }
  if (!flags.model.empty() && flags.only != "ops") {
    auto loaded = Model::Load(flags.model, {.device = flags.device});
    if (!loaded.ok()) {
      std::cerr << loaded.status() << "\n";
      return 1;
    }
    PrintSessionBytes(flags.model, **loaded);
  }
  bench::Roofline machine(Now);
  if (flags.only != "ops" && flags.device == "cpu") {
    machine.MeasureReadBandwidth();
    roofline = &machine;
  }
  if (flags.only == "kernels") {  // bench/kernel_rows.h
    if (roofline == nullptr) {
      std::cerr << "--only=kernels measures the CPU kernels: --device=cpu\n";
      return 2;
    }
    bench::KernelTable(config, flags.sessions, n, *roofline, Now);
    bench::DenseProductTable(config, {1, 2, 4, 8, 16, 32, 64, 128}, Now);
    return 0;
  }
  if (flags.only == "decode" || flags.only == "ingest") {
    if (flags.only == "decode") {
      DecodeTable(flags, *ttt, *plain);
    } else {
      IngestTable(flags, *ttt, *plain);
    }
    if (roofline != nullptr) roofline->Print();
    return 0;
  }
  if (flags.only == "scaling" || flags.only == "ops") {
    ScalingTable(flags, *ttt, *plain);
    if (flags.device == "cpu" && flags.only == "scaling") DownProjectionFormulations(flags, config);
    if (roofline != nullptr) roofline->Print();
    return 0;
  }
  const double peak = SgemmGflops(n, config.hidden_size, config.intermediate_size);
  auto bf16 = Build(config, weights, {.device = flags.device, .dtype = "bf16"});

  const double on = IngestRate(*ttt, 1, n, n);
  const double off = IngestRate(*plain, 1, n, n);
  const double achieved = on * FlopsPerToken(config, n / 2.0, true) / 1e9;
  const double on_bf16 = IngestRate(*bf16, 1, n, n);
  const int64_t piece = config.ttt_chunk / 4;
  const double stream_one = IngestRate(*ttt, 1, n / 4, piece);
  const double stream_eight = IngestRate(*ttt, 8, n / 4, piece);
  const int64_t steps = std::min<int64_t>(64, n);
  const double decode_one = IngestRate(*ttt, 1, steps, 1);
  const double decode_eight = IngestRate(*ttt, 8, steps, 1);
  const double python = flags.python.empty() ? 0 : PythonReferenceRate(flags, config, weights);
  const std::string tokens = std::to_string(n);
  AddRoofline("ingest " + tokens + " tokens in one call, TTT on", on, config, 1, 0, n, n, true);
  AddRoofline("ingest " + tokens + " tokens in one call, TTT off", off, config, 1, 0, n, n, false);
  const std::string pieces =
      "pieces of " + std::to_string(piece) + " (" + std::to_string(n / 4) + " tokens), ";
  AddRoofline(pieces + "1 sequence, TTT on", stream_one, config, 1, 0, n / 4, piece, true);
  AddRoofline(pieces + "8 sequences, TTT on", stream_eight, config, 8, 0, n / 4, piece, true);
  AddRoofline("decode " + std::to_string(steps) + " steps from empty, 1 sequence, TTT on",
              decode_one, config, 1, 0, steps, 1, true);
  AddRoofline("decode " + std::to_string(steps) + " steps from empty, 8 sequences, TTT on",
              decode_eight, config, 8, 0, steps, 1, true);

  std::printf("| measurement | figure | baseline | ratio |\n|---|---|---|---|\n");
  std::printf("| sgemm peak (%lldx%lldx%lld) | %.1f GFLOP/s | | |\n", (long long)n,
              (long long)config.hidden_size, (long long)config.intermediate_size, peak);
  std::printf("| ingest %lld tokens, TTT on vs off | %.0f tok/s | %.0f tok/s | %.3f |\n",
              (long long)n, on, off, on / off);
  std::printf("| ingest, achieved vs sgemm peak | %.1f GFLOP/s | %.1f GFLOP/s | %.3f |\n", achieved,
              peak, achieved / peak);
  std::printf("| ingest, bf16 vs f32 | %.0f tok/s | %.0f tok/s | %.3f |\n", on_bf16, on,
              on_bf16 / on);
  std::printf("| streaming pieces of %lld, 8 sequences vs 1 | %.0f tok/s | %.0f tok/s | %.3f |\n",
              (long long)piece, stream_eight, stream_one, stream_eight / stream_one);
  std::printf("| decode steps (1 token), 8 sequences vs 1 | %.0f tok/s | %.0f tok/s | %.3f |\n",
              decode_eight, decode_one, decode_eight / decode_one);
  if (python > 0) {
    std::printf(
        "| ingest batch 1, engine vs PyTorch reference | %.0f tok/s | %.0f tok/s | %.3f |\n", on,
        python, on / python);
  } else {
    std::printf("| ingest batch 1, engine vs PyTorch reference | %.0f tok/s | unavailable | |\n",
                on);
  }
  ScalingTable(flags, *ttt, *plain);
  if (flags.device == "cpu") DownProjectionFormulations(flags, config);
  if (roofline != nullptr) roofline->Print();
  return 0;
}

}  // namespace
}  // namespace ttt::engine

int main(int argc, char** argv) {
  ttt::util::TuneMallocForTensors();
  return ttt::engine::Run(ttt::engine::ParseFlags(argc, argv));
}
