// ttt-eval: what In-Place TTT does for a user, measured through the serving path
// (train/eval_lib.h): held-out documents streamed into sessions, >= 16k-token streams with and
// without a reset at document end, the re-reading test, recall beyond the window; for the TTT
// model with TTT on, the same weights with TTT off (eta 0), and the plain twin trained for the
// same budget (optionally a reference model too). eta and the update clip are swept on the
// validation split only; the test split is used once, for the tables. Writes a markdown report
// with the issue-12 goals checked, and PNG plots (gnuplot). tools/run_eval.sh calls this.
// --mode=memory writes the issue-28 report instead (train/memory_eval.h: carry-over and the
// memory curve on one split of Brown and of an out-of-domain corpus); tools/run_eval_memory.sh.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "engine/compact.h"
#include "engine/internal/safetensors.h"
#include "engine/model.h"
#include "train/common.h"
#include "train/eval_lib.h"
#include "train/memory_eval.h"
#include "util/files.h"
#include "util/malloc_tuning.h"
#include "util/status_macros.h"

ABSL_FLAG(std::string, model, "models/ttt-brown", "the TTT model folder");
ABSL_FLAG(std::string, twin, "models/ttt-brown-baseline",
          "the plain model trained for the same budget (empty = skip)");
ABSL_FLAG(std::string, reference, "", "another model to show beside them (empty = none)");
ABSL_FLAG(std::string, reference_label, "reference", "its label in the tables");
ABSL_FLAG(std::string, valid_tokens, "data/brown/valid.tok", "validation ids (for the sweep)");
ABSL_FLAG(std::string, test_tokens, "data/brown/test.tok", "test ids (for the tables)");
ABSL_FLAG(std::string, sweep, "",
          "eta:clip[:cap] settings of the TTT model tried on the validation split, "
          "comma-separated (e.g. 0.5:5,1:5:30); cap is ttt_delta_cap, absent = 0 (no cap); "
          "empty = no sweep");
ABSL_FLAG(bool, sweep_only, false, "print the validation sweep and stop (no test split)");
ABSL_FLAG(std::string, ttt_delta_dtype, "",
          "float32 or bfloat16: how every model measured keeps its fast-weight deltas (empty: "
          "the checkpoint's); with bfloat16 each --sweep setting is also measured with float32 "
          "deltas and the paired difference printed");
ABSL_FLAG(int64_t, stream_tokens, 16384, "minimum length of a stream of documents");
ABSL_FLAG(int64_t, reread_docs, 12, "documents in the re-reading test");
ABSL_FLAG(int64_t, reread_len, 512, "tokens re-read");
ABSL_FLAG(int64_t, reread_others, 2, "documents read between a document and its re-reading");
ABSL_FLAG(int64_t, recall_episodes, 256, "synthetic recall episodes");
ABSL_FLAG(int64_t, piece, 256, "tokens per Ingest call (results do not depend on it)");
ABSL_FLAG(std::string, out_md, "docs/eval.md", "markdown report");
ABSL_FLAG(std::string, out_dir, "docs", "folder of the plots (eval_*.png)");
ABSL_FLAG(std::string, work_dir, "data/eval", "intermediate data (plot tables)");
ABSL_FLAG(int, threads, 2, "intra-op threads");
ABSL_FLAG(std::string, command, "tools/run_eval.sh", "the command line recorded in the report");
ABSL_FLAG(std::string, mode, "full",
          "full: docs/eval.md (the Brown test split, the sweep on validation); memory: the "
          "issue-28 report (carry-over, memory curve) on --split of Brown and the out-of-domain "
          "corpus, for the model, TTT off, the twin, the reference and each --sweep setting; "
          "compaction: recall through sessions compacted while idle (validation only)");
ABSL_FLAG(std::string, split, "valid",
          "memory mode: valid (choosing between models) or test (once per shipped model)");
ABSL_FLAG(std::string, ood_valid_tokens, "data/sotu/valid.tok",
          "out-of-domain validation ids (tools/fetch_ood_corpus.sh)");
ABSL_FLAG(std::string, ood_test_tokens, "data/sotu/test.tok", "out-of-domain test ids");
ABSL_FLAG(std::string, ood_name, "State of the Union", "the out-of-domain corpus in the report");
ABSL_FLAG(std::string, memory_distances, "512,2048,3300,6000,8000",
          "memory mode: tokens of a document read before its start is re-read");
ABSL_FLAG(int64_t, carry_before, 2, "memory mode: documents read before a carry-over target");
ABSL_FLAG(std::string, fade_keeps, "",
          "memory mode: the carry-over again with the fast weights faded to each of these "
          "fractions (in [0, 1]) kept at every document end, e.g. 0.5,0.25,0 (a session's "
          "fade_at_document_end is 1 - the fraction kept)");
ABSL_FLAG(int64_t, memory_docs, 0, "memory mode: documents per corpus (0 = all)");
ABSL_FLAG(int64_t, after_others, 2,
          "memory mode: unrelated documents read between a document and its last re-reading");

namespace ttt::train {
namespace {

namespace fs = std::filesystem;

struct Bucket {
  int64_t begin, end;
  std::string name;
};

std::vector<Bucket> DocBuckets() {
  return {{1, 64, "1-63"},
          {64, 512, "64-511"},
          {512, 1024, "512-1023"},
          {1024, 2048, "1024-2047"},
          {2048, 1 << 30, "2048+"}};
}

std::vector<Bucket> StreamBuckets(int64_t n) {
  std::vector<Bucket> b = {{64, 512, "64-511"}, {512, 2048, "512-2047"}, {2048, 4096, "2k-4k"}};
  for (int64_t s = 4096; s < n; s += 4096) {
    b.push_back({s, s + 4096, absl::StrCat(s / 1024, "k-", (s + 4096) / 1024, "k")});
  }
  b.push_back({n, 1 << 30, absl::StrCat(n / 1024, "k+")});
  return b;
}

struct Variant {
  std::string label;
  VariantSpec spec;
};

struct Measured {
  StreamResult streams, reset_streams;
  RereadResult reread;
  RecallResult recall;
};

std::string Fmt(double v) { return std::isnan(v) ? "–" : absl::StrFormat("%.4f", v); }
std::string Pct(double now, double before) {
  return absl::StrFormat("%+.1f %%", 100 * (now / before - 1));
}

// "eta 0.5, clip 5" and, when set, ", delta cap 30": how a TTT setting is named in the report.
std::string Setting(double eta, double clip, double cap) {
  return absl::StrFormat("eta %g, clip %g", eta, clip) +
         (cap > 0 ? absl::StrFormat(", delta cap %g", cap) : std::string());
}

std::string Meta(const fs::path& dir, const std::string& key) {
  auto f = engine::SafetensorsFile::Open(dir / "model.safetensors");
  if (!f.ok()) return "?";
  auto it = (*f)->metadata().find(key);
  return it == (*f)->metadata().end() ? "?" : it->second;
}

absl::StatusOr<Corpus> Load(const std::string& flag_path, int64_t vocab) {
  return LoadTokenIds(flag_path, vocab);
}

absl::StatusOr<Measured> Measure(const Variant& v, const Corpus& docs, bool full) {
  VariantSpec spec = v.spec;
  if (!spec.delta_dtype && !absl::GetFlag(FLAGS_ttt_delta_dtype).empty()) {
    spec.delta_dtype = absl::GetFlag(FLAGS_ttt_delta_dtype);
  }
  ASSIGN_OR_RETURN(auto model, LoadVariant(spec));
  Measured m;
  const int64_t piece = absl::GetFlag(FLAGS_piece), len = absl::GetFlag(FLAGS_stream_tokens);
  ASSIGN_OR_RETURN(m.streams, ScoreStreams(*model, docs, len, /*reset=*/false, piece));
  // Reset at each document's end: every document in a session of its own (the overall loss).
  ASSIGN_OR_RETURN(m.reset_streams, ScoreStreams(*model, docs, len, /*reset=*/true, piece));
  ASSIGN_OR_RETURN(m.reread, ScoreReread(*model, docs, absl::GetFlag(FLAGS_reread_docs),
                                         absl::GetFlag(FLAGS_reread_len),
                                         full ? absl::GetFlag(FLAGS_reread_others) : 0, piece));
  m.recall = ScoreRecall(*model, docs, full ? absl::GetFlag(FLAGS_recall_episodes) : 64);
  std::printf("%-44s documents %.4f | stream %.4f | re-read %.4f -> %.4f | recall %.3f\n",
              v.label.c_str(), m.reset_streams.by_stream_position.MeanAll(),
              m.streams.by_stream_position.MeanAll(), m.reread.first, m.reread.after_doc,
              m.recall.accuracy);
  std::fflush(stdout);
  return m;
}

// One --sweep entry, eta:clip or eta:clip:cap (cap 0 = none).
struct SweepEntry {
  double eta = 0, clip = 0, cap = 0;
};

absl::StatusOr<SweepEntry> ParseSweepEntry(absl::string_view item) {
  std::vector<std::string> parts = absl::StrSplit(item, ':');
  SweepEntry e;
  if (parts.size() < 2 || parts.size() > 3 || !absl::SimpleAtod(parts[0], &e.eta) ||
      !absl::SimpleAtod(parts[1], &e.clip) ||
      (parts.size() == 3 && !absl::SimpleAtod(parts[2], &e.cap))) {
    return absl::InvalidArgumentError(
        absl::StrCat("--sweep entry '", item, "' is not eta:clip or eta:clip:cap"));
  }
  return e;
}

// The validation sweep: its table, and its pick: among the settings whose validation streams
// (fed without reset) do not drift (last 4k tokens no higher than tokens 64-511), the one whose
// re-reading gains most; when every setting drifts, the lowest stream loss.
struct Sweep {
  std::string table;
  std::string best;
};

struct SweepPick {
  bool steady = false;
  double reread = 1e30, stream = 1e30;  // re-reading ratio (after / first), stream loss
  bool Beats(const SweepPick& o) const {
    if (steady != o.steady) return steady;
    return steady ? reread < o.reread : stream < o.stream;
  }
};

// What bf16 deltas cost a sweep setting: `bf16` measured on `valid` with them, against the same
// setting with float32 deltas, per document (reset at each end) and per stream position (no
// reset), pooled over tokens, with 95 % paired-bootstrap intervals (nats/token; + = bf16 worse).
absl::Status PrintDeltaDtypeCost(const Variant& v, const Corpus& valid, const Measured& bf16) {
  Variant f32 = v;
  f32.label += ", float32 deltas";
  f32.spec.delta_dtype = "float32";
  ASSIGN_OR_RETURN(Measured m, Measure(f32, valid, /*full=*/false));
  const int64_t all = std::numeric_limits<int64_t>::max();
  const PairedDifference docs =
      BootstrapDifference(bf16.reset_streams.by_document, m.reset_streams.by_document, 1, all);
  const PairedDifference streams =
      BootstrapDifference(bf16.streams.by_document, m.streams.by_document, 1, all);
  std::printf(
      "bf16 - float32 deltas, %s: documents %+.6f [%+.6f, %+.6f], streams %+.6f [%+.6f, "
      "%+.6f] nats/token; re-read %.4f vs %.4f; recall %.3f vs %.3f\n",
      v.label.c_str(), docs.diff, docs.low, docs.high, streams.diff, streams.low, streams.high,
      bf16.reread.after_doc, m.reread.after_doc, bf16.recall.accuracy, m.recall.accuracy);
  std::fflush(stdout);
  return absl::OkStatus();
}

absl::StatusOr<Sweep> RunSweep(const fs::path& model_dir, const Corpus& valid) {
  Sweep s;
  const std::string spec = absl::GetFlag(FLAGS_sweep);
  if (spec.empty()) return s;
  const int64_t n = absl::GetFlag(FLAGS_stream_tokens);
  std::ostringstream t;
  t << "| eta | clip | delta cap | documents, all | stream loss, all | 64-511 | last 4k ("
    << (n - 4096) / 1024 << "k-" << n / 1024
    << "k) | re-read change | recall |\n|---|---|---|---|---|---|---|---|---|\n";
  SweepPick best;
  for (absl::string_view item : absl::StrSplit(spec, ',', absl::SkipEmpty())) {
    ASSIGN_OR_RETURN(const SweepEntry e, ParseSweepEntry(item));
    const double eta = e.eta, clip = e.clip, cap = e.cap;
    Variant v{"valid: " + Setting(eta, clip, cap), {model_dir, eta, clip, cap}};
    ASSIGN_OR_RETURN(Measured m, Measure(v, valid, /*full=*/false));
    if (absl::GetFlag(FLAGS_ttt_delta_dtype) == "bfloat16") {
      RETURN_IF_ERROR(PrintDeltaDtypeCost(v, valid, m));
    }
    const PositionLoss& p = m.streams.by_stream_position;
    t << "| " << eta << " | " << clip << " | " << (cap > 0 ? absl::StrCat(cap) : "off") << " | "
      << Fmt(m.reset_streams.by_stream_position.MeanAll()) << " | " << Fmt(p.MeanAll()) << " | "
      << Fmt(p.Mean(64, 512)) << " | " << Fmt(p.Mean(n - 4096, n)) << " | "
      << Pct(m.reread.after_doc, m.reread.first) << " | " << Fmt(m.recall.accuracy) << " |\n";
    const SweepPick here{p.Mean(n - 4096, n) <= p.Mean(64, 512),
                         m.reread.after_doc / m.reread.first, p.MeanAll()};
    if (s.best.empty() || here.Beats(best)) {
      best = here;
      s.best = Setting(eta, clip, cap);
    }
  }
  s.table = t.str();
  return s;
}

// Writes `name`.tsv (bin centre, then each series' mean loss per bin) and plots it.
void Plot(const std::string& name, const std::string& title, const std::string& xlabel,
          const std::vector<std::string>& labels, const std::vector<const PositionLoss*>& series,
          int64_t bin, int64_t min_count, int64_t window) {
  const fs::path work = absl::GetFlag(FLAGS_work_dir), out = absl::GetFlag(FLAGS_out_dir);
  std::error_code ec;
  fs::create_directories(work, ec);
  const fs::path tsv = work / (name + ".tsv");
  {
    std::ofstream f(tsv);
    const int64_t n = static_cast<int64_t>(series[0]->count.size());
    for (int64_t b = 0; b < n; b += bin) {
      int64_t count = 0;
      for (int64_t p = std::max<int64_t>(1, b); p < std::min(b + bin, n); ++p)
        count += series[0]->count[p];
      if (count < min_count) continue;  // too few documents reach here
      f << b + bin / 2;
      for (const PositionLoss* s : series) f << "\t" << s->Mean(std::max<int64_t>(1, b), b + bin);
      f << "\n";
    }
  }
  const fs::path gp = work / (name + ".gp");
  {
    std::ofstream f(gp);
    f << "set terminal pngcairo size 960,560 font 'sans,11'\nset output '"
      << (out / (name + ".png")).string() << "'\nset title '" << title << "'\nset xlabel '"
      << xlabel << "'\nset ylabel 'mean next-token loss (nats)'\nset key top left\nset grid\n";
    if (window > 0) {
      f << "set arrow from " << window << ", graph 0 to " << window
        << ", graph 1 nohead dt 2 lc rgb 'gray'\n";
    }
    f << "plot";
    for (size_t i = 0; i < labels.size(); ++i) {
      f << (i ? "," : "") << " '" << tsv.string() << "' using 1:" << i + 2
        << " with lines lw 2 title '" << labels[i] << "'";
    }
    f << "\n";
  }
  if (std::system(absl::StrCat("gnuplot ", gp.string()).c_str()) != 0) {
    std::fprintf(stderr, "ttt-eval: gnuplot failed for %s\n", name.c_str());
  }
}

std::string BucketTable(const std::vector<Variant>& vs, const std::vector<const PositionLoss*>& ps,
                        const std::vector<Bucket>& buckets) {
  std::ostringstream md;
  md << "| model | all |";
  for (const auto& b : buckets) md << " " << b.name << " |";
  md << "\n|---|---|";
  for (size_t i = 0; i < buckets.size(); ++i) md << "---|";
  md << "\n";
  for (size_t v = 0; v < vs.size(); ++v) {
    md << "| " << vs[v].label << " | " << Fmt(ps[v]->MeanAll()) << " |";
    for (const auto& b : buckets) md << " " << Fmt(ps[v]->Mean(b.begin, b.end)) << " |";
    md << "\n";
  }
  return md.str();
}

std::string Signed(double v) { return std::isnan(v) ? "–" : absl::StrFormat("%+.4f", v); }

std::string Interval(const PairedDifference& d) {
  return absl::StrCat("[", Signed(d.low), ", ", Signed(d.high), "]");
}

// TTT on minus the twin and minus TTT off in each document bucket, paired over documents: how
// much of each gap is the model and how much which documents were held out.
std::string DifferenceTable(const std::vector<Measured>& m) {
  std::vector<Bucket> buckets = DocBuckets();
  buckets.push_back({64, 1 << 30, "64+ (beyond the window)"});
  buckets.push_back({1, 1 << 30, "all"});
  std::ostringstream md;
  md << "| positions | TTT on - twin | 95 % interval | TTT on - TTT off | 95 % interval |\n"
     << "|---|---|---|---|---|\n";
  const auto& on = m[0].reset_streams.by_document;
  for (const auto& b : buckets) {
    const auto& twin_docs = m[2].reset_streams.by_document;
    const auto& off_docs = m[1].reset_streams.by_document;
    const PairedDifference twin = BootstrapDifference(on, twin_docs, b.begin, b.end);
    const PairedDifference off = BootstrapDifference(on, off_docs, b.begin, b.end);
    md << "| " << b.name << " | " << Signed(twin.diff) << " | " << Interval(twin) << " | "
       << Signed(off.diff) << " | " << Interval(off) << " |\n";
  }
  return md.str();
}

// The goals of issue 12, checked on the test tables. Variant 0 is TTT on, 1 TTT off, 2 the twin.
std::string Goals(const std::vector<Measured>& m, int64_t n) {
  std::ostringstream md;
  md << "| goal | measured | met |\n|---|---|---|\n";
  auto row = [&](const std::string& goal, const std::string& measured, bool met) {
    md << "| " << goal << " | " << measured << " | " << (met ? "yes" : "**no**") << " |\n";
  };
  // 1. Every bucket, documents and streams: TTT on <= TTT off and <= twin.
  int worse_off = 0, worse_twin = 0, total = 0;
  std::vector<std::string> gaps;  // document buckets above the twin, with their intervals
  auto check = [&](const PositionLoss& on, const PositionLoss& off, const PositionLoss& twin,
                   const std::vector<Bucket>& buckets, bool documents) {
    for (const auto& b : buckets) {
      const double a = on.Mean(b.begin, b.end);
      if (std::isnan(a)) continue;
      ++total;
      worse_off += a > off.Mean(b.begin, b.end);
      worse_twin += a > twin.Mean(b.begin, b.end);
      if (documents && a > twin.Mean(b.begin, b.end)) {
        const PairedDifference d = BootstrapDifference(
            m[0].reset_streams.by_document, m[2].reset_streams.by_document, b.begin, b.end);
        gaps.push_back(absl::StrCat(b.name, " ", Signed(d.diff), ", 95 % interval ", Interval(d)));
      }
    }
  };
  check(m[0].reset_streams.by_document_position, m[1].reset_streams.by_document_position,
        m[2].reset_streams.by_document_position, DocBuckets(), true);
  check(m[0].streams.by_stream_position, m[1].streams.by_stream_position,
        m[2].streams.by_stream_position, StreamBuckets(n), false);
  row("every position bucket (documents; streams without reset): TTT on <= TTT off and <= twin",
      absl::StrCat("above TTT off in ", worse_off, " of ", total, " buckets, above the twin in ",
                   worse_twin,
                   gaps.empty() ? "" : absl::StrCat(" (", absl::StrJoin(gaps, "; "), ")")),
      worse_off == 0 && worse_twin == 0);
  const double reread = m[0].reread.after_doc / m[0].reread.first - 1;
  row("re-reading: loss after reading the document >= 10 % below the first reading (moonshot 25 %)",
      absl::StrCat(Pct(m[0].reread.after_doc, m[0].reread.first), " (twin ",
                   Pct(m[2].reread.after_doc, m[2].reread.first), ")"),
      reread <= -0.10);
  const double beyond_on = m[0].reset_streams.by_document_position.Mean(64, 1 << 30);
  const double beyond_twin = m[2].reset_streams.by_document_position.Mean(64, 1 << 30);
  row("first reading, beyond the window (document positions 64+): >= 3 % below the twin",
      absl::StrCat(Fmt(beyond_on), " vs ", Fmt(beyond_twin), " (", Pct(beyond_on, beyond_twin),
                   ")"),
      beyond_on <= 0.97 * beyond_twin);
  const PositionLoss& s = m[0].streams.by_stream_position;
  row(absl::StrCat("no divergence: streams without reset, last 4k tokens (", (n - 4096) / 1024,
                   "k-", n / 1024, "k) <= tokens 64-511"),
      absl::StrCat(Fmt(s.Mean(n - 4096, n)), " vs ", Fmt(s.Mean(64, 512))),
      s.Mean(n - 4096, n) <= s.Mean(64, 512));
  row("recall beyond the window >= 95 %", Fmt(m[0].recall.accuracy), m[0].recall.accuracy >= 0.95);
  return md.str();
}

// The report: what was measured, the goals, then each table. Variants 0-2 are TTT on, TTT off
// and the twin (Run builds them in that order).
struct Report {
  fs::path model_dir, twin_dir;
  const engine::ModelConfig* config;
  const std::vector<Variant>* vs;
  const std::vector<Measured>* m;
  std::vector<const PositionLoss*> docs, streams, reset;
  const Corpus *test, *valid;
  int64_t n, window;
  const Sweep* sweep;
};

std::string ReportMarkdown(const Report& r) {
  const engine::ModelConfig& config = *r.config;
  const std::vector<Variant>& vs = *r.vs;
  const std::vector<Measured>& m = *r.m;
  const Corpus &test = *r.test, &valid = *r.valid;
  const fs::path &model_dir = r.model_dir, &twin_dir = r.twin_dir;
  const auto &docs = r.docs, &streams = r.streams, &reset = r.reset;
  const int64_t n = r.n, window = r.window;
  const Sweep& sweep = *r.sweep;
  std::ostringstream md;
  md << "# Evaluation of the default model (generated)\n\n"
     << "Generated by `" << absl::GetFlag(FLAGS_command) << "` (ttt-eval); do not edit by hand. "
     << "Everything is measured through the serving path (`Model::Ingest`, in pieces of "
     << absl::GetFlag(FLAGS_piece) << " tokens), as a session sees it. What it means: "
     << "[model.md](model.md#evaluation).\n\n"
     << "- TTT model: `" << model_dir.string() << "` (" << Meta(model_dir, "steps") << " steps, "
     << Meta(model_dir, "tokens") << " training tokens); window " << window << ", TTT layers "
     << absl::StrJoin(config.ttt_layers, ",") << ", chunk " << config.ttt_chunk << ", eta "
     << config.ttt_lr << ", update clip " << config.ttt_clip
     << (config.ttt_delta_cap > 0 ? absl::StrCat(", delta cap ", config.ttt_delta_cap) : "")
     << ".\n"
     << "- Plain twin: `" << twin_dir.string() << "` (" << Meta(twin_dir, "steps") << " steps, "
     << Meta(twin_dir, "tokens") << " training tokens).\n";
  if (vs.size() > 3) md << "- " << vs[3].label << ": `" << vs[3].spec.dir.string() << "`.\n";
  md << "- Test split: " << test.docs.size() << " held-out Brown documents, " << test.total_tokens
     << " tokens. The validation split (" << valid.docs.size() << " documents) is used only for "
     << "the sweep below.\n\n## Goals (issue 12), test split\n\n"
     << Goals(m, n) << "\n## Documents, one session each (loss by position in the document)\n\n"
     << BucketTable(vs, docs, DocBuckets())
     << "\n![loss by position](eval_loss_by_position.png)\n\n"
     << "TTT on against the twin and against TTT off, bucket by bucket (nats/token; negative: "
     << "TTT on is better), with a 95 % interval from a paired bootstrap over the "
     << test.docs.size() << " test documents (2000 resamples): a gap whose interval straddles 0 "
     << "could be which documents were held out.\n\n"
     << DifferenceTable(m) << "\n"
     << "## Streams: documents read one after another into one session\n\n"
     << "The test documents in order, each as `<s>` + text, concatenated into streams of at least "
     << n << " tokens; loss by position in the session. Without reset (the fast weights carry "
     << "over every document):\n\n"
     << BucketTable(vs, streams, StreamBuckets(n))
     << "\nWith `reset_at_document_end` (state reset after each document):\n\n"
     << BucketTable(vs, reset, StreamBuckets(n)) << "\n![streams](eval_streams.png)\n\n";
  md << "## Re-reading\n\nThe first " << absl::GetFlag(FLAGS_reread_len) << " tokens of each of "
     << m[0].reread.docs << " test documents, scored in a fresh session; again after the session "
     << "has read the whole document; and again when " << m[0].reread.others
     << " other documents were read in between (targets 2.." << absl::GetFlag(FLAGS_reread_len)
     << ", mean nats/token).\n\n| model | first reading | after the document | change | after "
     << "other documents too | change |\n|---|---|---|---|---|---|\n";
  for (size_t v = 0; v < vs.size(); ++v) {
    const RereadResult& r = m[v].reread;
    md << "| " << vs[v].label << " | " << Fmt(r.first) << " | " << Fmt(r.after_doc) << " | "
       << Pct(r.after_doc, r.first) << " | " << Fmt(r.after_others) << " | "
       << Pct(r.after_others, r.first) << " |\n";
  }
  md << "\n## Recall beyond the window\n\n"
     << absl::GetFlag(FLAGS_recall_episodes)
     << " synthetic episodes (train/common.h): 24 key-value pairs in the first chunk, text until "
     << "every pair is outside the attention window, then every key queried; chance is 1/64.\n\n"
     << "| model | recall accuracy | loss on the values |\n|---|---|---|\n";
  for (size_t v = 0; v < vs.size(); ++v) {
    md << "| " << vs[v].label << " | " << Fmt(m[v].recall.accuracy) << " | "
       << Fmt(m[v].recall.value_loss) << " |\n";
  }
  md << "\n|delta W_down| per TTT layer at the end of the first stream without reset (TTT on): "
     << absl::StrJoin(
            m[0].streams.delta_norms_end, ", ",
            [](std::string* out, double d) { absl::StrAppend(out, absl::StrFormat("%.1f", d)); })
     << ".\n";
  if (!sweep.table.empty()) {
    md << "\n## eta, clip and delta cap, validation split only\n\nThe TTT model's weights served "
       << "with other step sizes, update clips and caps on the accumulated delta (validation "
       << "documents one session each, the same documents as streams without reset, re-reading of "
       << absl::GetFlag(FLAGS_reread_docs) << " validation documents, 64 recall episodes). The "
       << "pick (among the settings whose streams do not drift, last 4k <= 64-511, the largest "
       << "re-reading gain): **" << sweep.best << "**; the shipped config has "
       << Setting(config.ttt_lr, config.ttt_clip, config.ttt_delta_cap) << ".\n\n"
       << sweep.table;
  }
  return md.str();
}

absl::StatusOr<std::vector<int64_t>> ParseDistances(const std::string& s) {
  std::vector<int64_t> out;
  for (absl::string_view part : absl::StrSplit(s, ',', absl::SkipEmpty())) {
    int64_t v;
    if (!absl::SimpleAtoi(part, &v) || v < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("--memory_distances entry '", part, "' is not a token count >= 1"));
    }
    out.push_back(v);
  }
  return out;
}

absl::StatusOr<std::vector<double>> ParseFractions(const std::string& s) {
  std::vector<double> out;
  for (absl::string_view part : absl::StrSplit(s, ',', absl::SkipEmpty())) {
    double v;
    if (!absl::SimpleAtod(part, &v) || !(v >= 0 && v <= 1)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--fade_keeps entry '", part, "' is not a fraction in [0, 1]"));
    }
    out.push_back(v);
  }
  return out;
}

// --mode=memory: the issue-28 report on one split of Brown and of the out-of-domain corpus.
absl::Status RunMemory(const fs::path& model_dir, const engine::ModelConfig& config) {
  const std::string split = absl::GetFlag(FLAGS_split);
  if (split != "valid" && split != "test") {
    return absl::InvalidArgumentError(absl::StrCat("--split '", split, "' is not valid or test"));
  }
  const bool test = split == "test";
  MemoryReportOptions o;
  o.split = test ? "test" : "validation";
  for (auto [name, flag] :
       {std::pair<std::string, std::string>{
            "Brown", absl::GetFlag(test ? FLAGS_test_tokens : FLAGS_valid_tokens)},
        {absl::GetFlag(FLAGS_ood_name),
         absl::GetFlag(test ? FLAGS_ood_test_tokens : FLAGS_ood_valid_tokens)}}) {
    ASSIGN_OR_RETURN(Corpus c, Load(flag, config.vocab_size));
    o.corpora.push_back({absl::StrCat(name, ", ", o.split), std::move(c)});
  }
  ASSIGN_OR_RETURN(o.distances, ParseDistances(absl::GetFlag(FLAGS_memory_distances)));
  ASSIGN_OR_RETURN(o.fade_keeps, ParseFractions(absl::GetFlag(FLAGS_fade_keeps)));
  o.length = absl::GetFlag(FLAGS_reread_len);
  o.before = absl::GetFlag(FLAGS_carry_before);
  o.after_others = absl::GetFlag(FLAGS_after_others);
  o.max_docs = absl::GetFlag(FLAGS_memory_docs);
  o.piece = absl::GetFlag(FLAGS_piece);
  o.command = absl::GetFlag(FLAGS_command);
  o.cache_dir = fs::path(absl::GetFlag(FLAGS_work_dir)) / "memory-cache";
  o.variants.push_back(
      {"TTT on (" + Setting(config.ttt_lr, config.ttt_clip, config.ttt_delta_cap) + ")",
       {model_dir}});
  o.variants.push_back({"same weights, TTT off", {model_dir, 0.0}});
  if (!absl::GetFlag(FLAGS_twin).empty()) {
    o.variants.push_back({"plain twin", {absl::GetFlag(FLAGS_twin)}});
  }
  if (!absl::GetFlag(FLAGS_reference).empty()) {
    o.variants.push_back({absl::GetFlag(FLAGS_reference_label), {absl::GetFlag(FLAGS_reference)}});
  }
  for (absl::string_view item :
       absl::StrSplit(absl::GetFlag(FLAGS_sweep), ',', absl::SkipEmpty())) {
    ASSIGN_OR_RETURN(const SweepEntry e, ParseSweepEntry(item));
    o.variants.push_back(
        {"TTT on, " + Setting(e.eta, e.clip, e.cap), {model_dir, e.eta, e.clip, e.cap}});
  }
  ASSIGN_OR_RETURN(std::string md, MemoryReport(o));
  RETURN_IF_ERROR(util::WriteFileAtomically(absl::GetFlag(FLAGS_out_md), md));
  std::printf("wrote %s\n", absl::GetFlag(FLAGS_out_md).c_str());
  return absl::OkStatus();
}

// --mode=compaction: recall (the --recall_episodes episodes on the validation documents) through
// sessions compacted between the pairs and the queries, as an idle session is (engine/compact.h),
// against the same sessions never compacted. Prints a markdown table.
absl::Status RunCompactionRecall(const fs::path& model_dir, const engine::ModelConfig& config) {
  ASSIGN_OR_RETURN(Corpus valid, Load(absl::GetFlag(FLAGS_valid_tokens), config.vocab_size));
  ASSIGN_OR_RETURN(auto model, LoadVariant({model_dir}));
  const int64_t episodes = absl::GetFlag(FLAGS_recall_episodes);
  std::printf(
      "Recall through compaction, %s, %lld episodes on the validation documents "
      "(--valid_tokens)\n\n"
      "| session between the pairs and the queries | accuracy | queried values' loss (nats) |\n"
      "|---|---|---|\n",
      model_dir.c_str(), static_cast<long long>(episodes));
  const std::pair<const char*, std::optional<engine::KvCompaction>> tiers[] = {
      {"never compacted", std::nullopt},
      {"compacted: deltas bf16, KV cache fp32", engine::KvCompaction::kOff},
      {"compacted: deltas and KV cache bf16", engine::KvCompaction::kBf16},
      {"compacted: deltas bf16, KV cache int8", engine::KvCompaction::kInt8}};
  for (const auto& [label, kv] : tiers) {
    auto between = [kv = kv](engine::SequenceState& state) {
      if (!kv) return;
      engine::CompactStates({&state}, {.kv_cache = *kv});
      engine::ExpandState(state);
    };
    ASSIGN_OR_RETURN(RecallResult r, ScoreRecallThroughSessions(*model, valid, episodes, between));
    std::printf("| %s | %.4f | %.6f |\n", label, r.accuracy, r.value_loss);
    std::fflush(stdout);
  }
  return absl::OkStatus();
}

absl::Status Run() {
  at::set_num_threads(absl::GetFlag(FLAGS_threads));
  engine::SetCpuThreads(absl::GetFlag(FLAGS_threads));
  const fs::path model_dir = absl::GetFlag(FLAGS_model), twin_dir = absl::GetFlag(FLAGS_twin);
  ASSIGN_OR_RETURN(auto config, engine::LoadModelConfig(model_dir));
  const std::string mode = absl::GetFlag(FLAGS_mode);
  if (mode == "memory") return RunMemory(model_dir, config);
  if (mode == "compaction") return RunCompactionRecall(model_dir, config);
  if (mode != "full") {
    return absl::InvalidArgumentError(
        absl::StrCat("--mode '", mode, "' is not full, memory or compaction"));
  }
  if (twin_dir.empty()) return absl::InvalidArgumentError("--twin is required");
  ASSIGN_OR_RETURN(Corpus valid, Load(absl::GetFlag(FLAGS_valid_tokens), config.vocab_size));
  ASSIGN_OR_RETURN(Corpus test, Load(absl::GetFlag(FLAGS_test_tokens), config.vocab_size));
  const int64_t n = absl::GetFlag(FLAGS_stream_tokens);
  const int64_t window = config.sliding_window.value_or(0);

  ASSIGN_OR_RETURN(Sweep sweep, RunSweep(model_dir, valid));
  if (absl::GetFlag(FLAGS_sweep_only)) {
    std::printf("%s\npick: %s\n", sweep.table.c_str(), sweep.best.c_str());
    return absl::OkStatus();
  }

  std::vector<Variant> vs = {
      {"TTT on (" + Setting(config.ttt_lr, config.ttt_clip, config.ttt_delta_cap) + ")",
       {model_dir}},
      {"same weights, TTT off", {model_dir, 0.0}},
      {"plain twin", {twin_dir}}};
  if (!absl::GetFlag(FLAGS_reference).empty()) {
    vs.push_back({absl::GetFlag(FLAGS_reference_label), {absl::GetFlag(FLAGS_reference)}});
  }
  std::vector<Measured> m;
  for (const Variant& v : vs) {
    ASSIGN_OR_RETURN(Measured x, Measure(v, test, /*full=*/true));
    m.push_back(std::move(x));
  }
  std::vector<const PositionLoss*> docs, streams, reset;
  std::vector<std::string> labels;
  for (size_t i = 0; i < vs.size(); ++i) {
    docs.push_back(&m[i].reset_streams.by_document_position);
    streams.push_back(&m[i].streams.by_stream_position);
    reset.push_back(&m[i].reset_streams.by_stream_position);
    labels.push_back(vs[i].label);
  }
  // A bin is drawn while at least a quarter of the sessions (documents, streams) reach it.
  const int64_t sessions = static_cast<int64_t>(test.docs.size());
  Plot("eval_loss_by_position", "Held-out documents, one session each: loss by position",
       "token position in the document", labels, docs, 128,
       128 * std::max<int64_t>(1, sessions / 4), window);
  std::vector<const PositionLoss*> sp = streams;
  std::vector<std::string> sl;
  for (const auto& l : labels) sl.push_back(l + ", no reset");
  sp.push_back(reset[0]);
  sl.push_back(labels[0] + ", reset at document end");
  Plot("eval_streams",
       absl::StrCat("Held-out documents read one after another into one session (", n / 1024,
                    "k+ tokens)"),
       "token position in the session", sl, sp, 512,
       512 * std::max<int64_t>(1, test.total_tokens / n / 4), 0);

  const Report report{model_dir, twin_dir, &config, &vs, &m,     docs,  streams,
                      reset,     &test,    &valid,  n,   window, &sweep};
  RETURN_IF_ERROR(util::WriteFileAtomically(absl::GetFlag(FLAGS_out_md), ReportMarkdown(report)));
  std::printf("wrote %s\n", absl::GetFlag(FLAGS_out_md).c_str());
  return absl::OkStatus();
}

}  // namespace
}  // namespace ttt::train

int main(int argc, char** argv) {
  ttt::util::TuneMallocForTensors(ttt::util::MallocUse::kBatchJob);
  absl::SetProgramUsageMessage("ttt-eval: what TTT does for a session (docs/eval.md)");
  absl::ParseCommandLine(argc, argv);
  absl::Status s = ttt::train::Run();
  if (!s.ok()) {
    std::fprintf(stderr, "ttt-eval: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
