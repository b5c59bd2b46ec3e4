// ttt-eval: measures what In-Place TTT does for a model, on held-out documents streamed through
// the engine's serving path (Model::Ingest, the same code the server runs):
//   - the same weights with TTT on and off (ModelOptions::ttt_lr = 0), and optionally other eta,
//   - a baseline trained without TTT,
// mean next-token loss overall and by position bucket (inside the attention window / beyond it),
// and accuracy on the synthetic associative-recall task (train/common.h). Writes a markdown report
// and a PNG plot of loss against position (gnuplot). docs/eval.md was made by
// tools/run_eval.sh, which calls this with its defaults.
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "engine/model.h"
#include "engine/safetensors.h"
#include "engine/status_macros.h"
#include "train/common.h"

ABSL_FLAG(std::string, model, "models/ttt-brown", "the TTT model folder");
ABSL_FLAG(std::string, baseline, "models/ttt-brown-baseline",
          "a model trained without TTT for the same budget (empty = skip)");
ABSL_FLAG(std::string, test_tokens, "data/brown/test.tok", "held-out token ids, a doc a line");
ABSL_FLAG(int64_t, max_docs, 0, "use only the first N documents (0 = all)");
ABSL_FLAG(std::string, eta_sweep, "0.5,2", "extra eta values to run the TTT model with");
ABSL_FLAG(int64_t, recall_episodes, 256, "synthetic recall episodes (from the test documents)");
ABSL_FLAG(int64_t, piece, 256, "tokens per Ingest call (results do not depend on it)");
ABSL_FLAG(int64_t, bin, 128, "position bin of the plot");
ABSL_FLAG(std::string, out_md, "docs/eval.md", "markdown report");
ABSL_FLAG(std::string, out_png, "docs/eval_loss_by_position.png", "plot (needs gnuplot)");
ABSL_FLAG(std::string, work_dir, "data/eval", "intermediate data (plot table)");
ABSL_FLAG(int, threads, 2, "intra-op threads");
ABSL_FLAG(std::string, command, "tools/run_eval.sh", "the command line recorded in the report");

namespace ttt::train {
namespace {

namespace fs = std::filesystem;
using engine::Model;
using engine::ModelOptions;

struct Variant {
  std::string label;
  fs::path dir;
  std::optional<double> eta;  // override; nullopt = the checkpoint's
};

struct TextResult {
  std::vector<double> sum;  // per position (position of the predicted token)
  std::vector<int64_t> count;
  double total = 0;
  int64_t n = 0;
};

struct Bucket {
  int64_t begin, end;
  std::string name;
};

// log p of every token of every document (bos prepended), streamed in pieces through Ingest
// with all documents in one batch.
absl::StatusOr<TextResult> ScoreText(const Model& model, const Corpus& docs, int64_t piece) {
  c10::InferenceMode guard;
  const int64_t bos = model.config().bos_token_id >= 0 ? model.config().bos_token_id : 1;
  std::vector<std::vector<int32_t>> streams;
  int64_t longest = 0;
  for (const auto& d : docs.docs) {
    std::vector<int32_t> s = {static_cast<int32_t>(bos)};
    s.insert(s.end(), d.begin(), d.end());
    longest = std::max<int64_t>(longest, s.size());
    streams.push_back(std::move(s));
  }
  std::vector<engine::SequenceState> states;
  for (size_t i = 0; i < streams.size(); ++i) states.push_back(model.NewSequence());
  TextResult r;
  r.sum.assign(longest, 0.0);
  r.count.assign(longest, 0);
  for (int64_t begin = 0; begin < longest; begin += piece) {
    std::vector<engine::IngestItem> items;
    std::vector<size_t> owner;
    for (size_t i = 0; i < streams.size(); ++i) {
      const int64_t n = static_cast<int64_t>(streams[i].size());
      if (begin >= n) continue;
      engine::IngestItem item;
      item.state = &states[i];
      item.tokens.assign(streams[i].begin() + begin,
                         streams[i].begin() + std::min(n, begin + piece));
      items.push_back(std::move(item));
      owner.push_back(i);
    }
    ASSIGN_OR_RETURN(auto lps, model.Ingest(absl::MakeSpan(items)));
    for (size_t k = 0; k < lps.size(); ++k) {
      for (size_t j = 0; j < lps[k].size(); ++j) {
        const float lp = lps[k][j];
        if (std::isnan(lp)) continue;  // the stream's first token
        const int64_t pos = begin + static_cast<int64_t>(j);
        r.sum[pos] -= lp;
        r.count[pos] += 1;
        r.total -= lp;
        r.n += 1;
      }
    }
  }
  return r;
}

double BucketLoss(const TextResult& r, const Bucket& b) {
  double s = 0;
  int64_t n = 0;
  for (int64_t p = b.begin; p < std::min<int64_t>(b.end, r.sum.size()); ++p) {
    s += r.sum[p];
    n += r.count[p];
  }
  return n > 0 ? s / n : std::numeric_limits<double>::quiet_NaN();
}

struct RecallResult {
  double accuracy = 0;
  double value_loss = 0;
};

RecallResult ScoreRecall(const Model& model, const Corpus& filler, const RecallSpec& spec,
                         int64_t episodes) {
  c10::InferenceMode guard;
  const int64_t bos = model.config().bos_token_id >= 0 ? model.config().bos_token_id : 1;
  std::mt19937_64 rng(2026);  // the same episodes for every model
  int64_t hits = 0, total = 0;
  double loss = 0;
  for (int64_t done = 0; done < episodes; done += 32) {
    const int64_t n = std::min<int64_t>(32, episodes - done);
    std::vector<RecallEpisode> eps;
    std::vector<int64_t> flat;
    for (int64_t i = 0; i < n; ++i) {
      eps.push_back(MakeRecallEpisode(spec, filler, bos, rng));
      flat.insert(flat.end(), eps.back().tokens.begin(), eps.back().tokens.end());
    }
    at::Tensor x = at::tensor(flat, at::kLong).view({n, -1});
    at::Tensor logp = at::log_softmax(model.ForwardTrain(x).to(at::kFloat), -1);
    at::Tensor pred = logp.argmax(-1);
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t t : eps[i].value_positions) {
        hits += pred[i][t - 1].item<int64_t>() == eps[i].tokens[t];
        loss -= logp[i][t - 1][eps[i].tokens[t]].item<double>();
        ++total;
      }
    }
  }
  return {static_cast<double>(hits) / total, loss / total};
}

std::string Fmt(double v) { return std::isnan(v) ? "–" : absl::StrFormat("%.4f", v); }

std::string Meta(const fs::path& dir, const std::string& key) {
  auto f = engine::SafetensorsFile::Open(dir / "model.safetensors");
  if (!f.ok()) return "?";
  auto it = (*f)->metadata().find(key);
  return it == (*f)->metadata().end() ? "?" : it->second;
}

absl::Status Run() {
  at::set_num_threads(absl::GetFlag(FLAGS_threads));
  const fs::path model_dir = absl::GetFlag(FLAGS_model), base_dir = absl::GetFlag(FLAGS_baseline);
  ASSIGN_OR_RETURN(auto config, engine::LoadModelConfig(model_dir));
  ASSIGN_OR_RETURN(Corpus docs, LoadTokenIds(absl::GetFlag(FLAGS_test_tokens), config.vocab_size));
  if (absl::GetFlag(FLAGS_max_docs) > 0 &&
      static_cast<int64_t>(docs.docs.size()) > absl::GetFlag(FLAGS_max_docs)) {
    docs.docs.resize(absl::GetFlag(FLAGS_max_docs));
    docs.total_tokens = 0;
    for (const auto& d : docs.docs) docs.total_tokens += d.size();
  }
  const int64_t window = config.sliding_window.value_or(0);
  const int64_t chunk = config.ttt_chunk;

  std::vector<Variant> variants = {{"TTT model, TTT on (eta " + absl::StrFormat("%g", config.ttt_lr) + ")", model_dir, std::nullopt},
                                   {"TTT model, TTT off (eta 0)", model_dir, 0.0}};
  if (!base_dir.empty()) variants.push_back({"baseline (no TTT, same budget)", base_dir, std::nullopt});
  for (absl::string_view e : absl::StrSplit(absl::GetFlag(FLAGS_eta_sweep), ',', absl::SkipEmpty())) {
    double eta;
    if (!absl::SimpleAtod(e, &eta)) return absl::InvalidArgumentError(absl::StrCat("bad eta '", e, "'"));
    variants.push_back({absl::StrFormat("TTT model, eta %g", eta), model_dir, eta});
  }

  std::vector<Bucket> buckets = {{1, window, absl::StrCat("1-", window - 1, " (in window)")},
                                 {window, 512, absl::StrCat(window, "-511")},
                                 {512, 1024, "512-1023"},
                                 {1024, 2048, "1024-2047"},
                                 {2048, 1 << 30, "2048+"}};
  RecallSpec rspec;
  rspec.window = window > 0 ? window : 64;
  rspec.chunk = chunk > 0 ? chunk : 64;

  std::vector<TextResult> text;
  std::vector<RecallResult> recall;
  for (const auto& v : variants) {
    ModelOptions opt;
    opt.ttt_lr = v.eta;
    ASSIGN_OR_RETURN(auto model, Model::Load(v.dir, opt));
    ASSIGN_OR_RETURN(auto r, ScoreText(*model, docs, absl::GetFlag(FLAGS_piece)));
    auto rc = ScoreRecall(*model, docs, rspec, absl::GetFlag(FLAGS_recall_episodes));
    std::printf("%-40s loss %.4f over %lld tokens; recall accuracy %.3f\n", v.label.c_str(),
                r.total / r.n, (long long)r.n, rc.accuracy);
    std::fflush(stdout);
    text.push_back(std::move(r));
    recall.push_back(rc);
  }

  // Plot table: bin start, then the mean loss per variant (first three variants).
  const fs::path work = absl::GetFlag(FLAGS_work_dir);
  std::error_code ec;
  fs::create_directories(work, ec);
  const int64_t bin = absl::GetFlag(FLAGS_bin);
  const size_t plotted = std::min<size_t>(3, variants.size());
  {
    std::ofstream tsv(work / "loss_by_position.tsv");
    tsv << "# position";
    for (size_t v = 0; v < plotted; ++v) tsv << "\t" << variants[v].label;
    tsv << "\n";
    for (int64_t b = 0; b < static_cast<int64_t>(text[0].sum.size()); b += bin) {
      std::ostringstream line;
      line << b + bin / 2;
      bool ok = true;
      for (size_t v = 0; v < plotted; ++v) {
        Bucket bk{std::max<int64_t>(1, b), b + bin, ""};
        int64_t n = 0;
        for (int64_t p = bk.begin; p < std::min<int64_t>(bk.end, text[v].count.size()); ++p) n += text[v].count[p];
        if (n < 8 * static_cast<int64_t>(bin)) ok = false;  // too few documents reach here
        line << "\t" << BucketLoss(text[v], bk);
      }
      if (ok) tsv << line.str() << "\n";
    }
  }
  const std::string png = absl::GetFlag(FLAGS_out_png);
  {
    std::ofstream gp(work / "plot.gp");
    gp << "set terminal pngcairo size 900,540 font 'sans,11'\n"
       << "set output '" << png << "'\n"
       << "set title 'Held-out Brown documents: next-token loss by position (bins of " << bin
       << " tokens)'\n"
       << "set xlabel 'token position in the document'\nset ylabel 'mean loss (nats)'\n"
       << "set key top right\nset grid\n";
    if (window > 0) {
      gp << "set arrow from " << window << ", graph 0 to " << window
         << ", graph 1 nohead dt 2 lc rgb 'gray'\n"
         << "set label 'attention window' at " << window + 20 << ", graph 0.95 tc rgb 'gray'\n";
    }
    gp << "plot";
    for (size_t v = 0; v < plotted; ++v) {
      gp << (v ? "," : "") << " '" << (work / "loss_by_position.tsv").string() << "' using 1:"
         << v + 2 << " with linespoints lw 2 title '" << variants[v].label << "'";
    }
    gp << "\n";
  }
  const std::string cmd = absl::StrCat("gnuplot ", (work / "plot.gp").string());
  if (std::system(cmd.c_str()) != 0) std::fprintf(stderr, "ttt-eval: gnuplot failed; no plot\n");

  // The report.
  std::ostringstream md;
  md << "# Evaluation of the default model (generated)\n\n"
     << "Generated by `" << absl::GetFlag(FLAGS_command) << "` (ttt-eval); do not edit by hand. "
     << "What was tried and what it means: [model.md](model.md#evaluation).\n\n"
     << "- TTT model: `" << model_dir.string() << "` (" << Meta(model_dir, "steps")
     << " steps, " << Meta(model_dir, "tokens") << " training tokens); window " << window
     << ", TTT layers " << absl::StrJoin(config.ttt_layers, ",") << ", chunk " << chunk
     << ", eta " << config.ttt_lr << ".\n";
  if (!base_dir.empty()) {
    md << "- Baseline: `" << base_dir.string() << "` (" << Meta(base_dir, "steps") << " steps, "
       << Meta(base_dir, "tokens") << " training tokens), same shape without TTT, same wall-time "
       << "budget.\n";
  }
  md << "- Held-out text: " << docs.docs.size() << " Brown test documents, "
     << text[0].n << " scored tokens, streamed through `Model::Ingest` in pieces of "
     << absl::GetFlag(FLAGS_piece) << " tokens (fast weights never reset inside a document).\n\n"
     << "## Held-out loss (nats/token) by position\n\n| model | all |";
  for (const auto& b : buckets) md << " " << b.name << " |";
  md << "\n|---|---|";
  for (size_t i = 0; i < buckets.size(); ++i) md << "---|";
  md << "\n";
  for (size_t v = 0; v < variants.size(); ++v) {
    md << "| " << variants[v].label << " | " << Fmt(text[v].total / text[v].n) << " |";
    for (const auto& b : buckets) md << " " << Fmt(BucketLoss(text[v], b)) << " |";
    md << "\n";
  }
  md << "\n## Synthetic associative recall\n\n"
     << recall.size() << " models x " << absl::GetFlag(FLAGS_recall_episodes) << " episodes: "
     << rspec.pairs << " key-value pairs in the first chunk, natural-text filler from the test "
     << "documents until every pair is outside the attention window, then every key queried "
     << "(argmax of the next-token distribution must be its value; keys and values from two sets "
     << "of " << rspec.num_keys << " tokens, so guessing a value scores 1/" << rspec.num_keys
     << " = " << Fmt(1.0 / rspec.num_keys) << ").\n\n"
     << "| model | recall accuracy | loss on the values |\n|---|---|---|\n";
  for (size_t v = 0; v < variants.size(); ++v) {
    md << "| " << variants[v].label << " | " << Fmt(recall[v].accuracy) << " | "
       << Fmt(recall[v].value_loss) << " |\n";
  }
  md << "\n![loss by position](" << fs::path(png).filename().string() << ")\n";
  RETURN_IF_ERROR(engine::WriteFileAtomically(absl::GetFlag(FLAGS_out_md), md.str()));
  std::printf("wrote %s and %s\n", absl::GetFlag(FLAGS_out_md).c_str(), png.c_str());
  return absl::OkStatus();
}

}  // namespace
}  // namespace ttt::train

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("ttt-eval: TTT on/off, baseline and recall (docs/eval.md)");
  absl::ParseCommandLine(argc, argv);
  absl::Status s = ttt::train::Run();
  if (!s.ok()) {
    std::fprintf(stderr, "ttt-eval: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
