#include "train/memory_eval.h"

#include <cmath>
#include <cstdio>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "engine/status_macros.h"

namespace ttt::train {
namespace {

struct CorpusMeasures {
  CarryOverResult carry;  // in_stream[0]: unrelated (the next corpus), [1]: related (its own)
  std::vector<MemoryPoint> curve;
  int64_t reach = 1 << 30;  // first document position attention cannot see past the bos from
};

// Stacked sliding windows reach back layers x (window - 1) tokens: a token predicted at document
// position >= this sees nothing before its document's bos except through the fast weights.
int64_t AttentionReach(const engine::Model& model) {
  const auto window = model.attention_window();
  if (!window || *window <= 0) return 1 << 30;  // full attention reaches everything
  return model.config().num_hidden_layers * (*window - 1) + 1;
}

std::string Signed(double v) { return std::isnan(v) ? "–" : absl::StrFormat("%+.4f", v); }

std::string DiffCell(const PairedDifference& d) {
  return absl::StrCat(Signed(d.diff), " [", Signed(d.low), ", ", Signed(d.high), "]");
}

// "-23.7 % [-25.1, -22.0] (16)": the change of the re-read tokens' loss against their first
// reading, its 95 % interval (the paired-bootstrap interval of the difference in nats over the
// first reading's mean) and how many documents were long enough.
std::string CurveCell(const MemoryPoint& p) {
  if (p.docs == 0) return "–";
  const double first = p.FirstMean();
  const PairedDifference d = p.Difference();
  return absl::StrFormat("%+.1f %% [%+.1f, %+.1f] (%d)", 100 * d.diff / first, 100 * d.low / first,
                         100 * d.high / first, p.docs);
}

std::string DistanceName(int64_t k) {
  if (k == kWholeDocument) return "whole document";
  return k % 1024 == 0 ? absl::StrCat(k / 1024, "k") : absl::StrCat(k);
}

const MemoryPoint* PointAt(const std::vector<MemoryPoint>& curve, int64_t k) {
  for (const MemoryPoint& p : curve) {
    if (p.distance == k) return &p;
  }
  return nullptr;
}

absl::StatusOr<CorpusMeasures> MeasureCorpus(const engine::Model& model,
                                             const MemoryReportOptions& o, size_t c) {
  const Corpus& docs = o.corpora[c].corpus;
  const Corpus& unrelated = o.corpora[(c + 1) % o.corpora.size()].corpus;
  const int64_t n = o.max_docs > 0 ? o.max_docs : static_cast<int64_t>(docs.docs.size());
  CorpusMeasures m;
  m.reach = AttentionReach(model);
  ASSIGN_OR_RETURN(m.carry, ScoreCarryOver(model, docs, {&unrelated, &docs}, o.before, n, o.piece));
  std::vector<int64_t> distances = o.distances;
  distances.push_back(kWholeDocument);
  ASSIGN_OR_RETURN(m.curve, ScoreMemoryCurve(model, docs, distances, o.length, n, o.piece));
  return m;
}

std::string Goals(const std::vector<CorpusMeasures>& m, const MemoryReportOptions& o) {
  std::ostringstream md;
  md << "| goal (issue 28), " << o.variants[0].first << " | corpus | measured | met |\n"
     << "|---|---|---|---|\n";
  auto change = [](const MemoryPoint* p) {
    return p && p->docs > 0 ? p->Difference().diff / p->FirstMean() : std::nan("");
  };
  for (size_t c = 0; c < m.size(); ++c) {
    const std::string& corpus = o.corpora[c].name;
    const MemoryPoint* whole = PointAt(m[c].curve, kWholeDocument);
    const double w = change(whole);
    md << "| re-reading after the whole document >= 15 % lower (moonshot 25 %) | " << corpus
       << " | " << (whole ? CurveCell(*whole) : "–") << " | " << (w <= -0.15 ? "yes" : "**no**")
       << " |\n";
    const MemoryPoint* at8k = PointAt(m[c].curve, 8000);
    if (at8k && at8k->docs > 0) {
      md << "| memory curve at 8000 tokens >= 10 % | " << corpus << " | " << CurveCell(*at8k)
         << " | " << (change(at8k) <= -0.10 ? "yes" : "**no**") << " |\n";
    }
    const PairedDifference carry = m[c].carry.Difference(0, 1, 1 << 30);
    md << "| carry-over from unrelated documents <= 0.01 nats/token | " << corpus << " | "
       << DiffCell(carry) << " | " << (carry.diff <= 0.01 ? "yes" : "**no**") << " |\n";
  }
  return md.str();
}

}  // namespace

absl::StatusOr<std::string> MemoryReport(const MemoryReportOptions& o) {
  if (o.corpora.size() < 2) {
    return absl::InvalidArgumentError(
        "the memory report needs two corpora (each is the other's "
        "unrelated text)");
  }
  if (o.variants.empty()) return absl::InvalidArgumentError("the memory report needs a model");
  std::vector<std::vector<CorpusMeasures>> m;  // [variant][corpus]
  for (const auto& [label, spec] : o.variants) {
    ASSIGN_OR_RETURN(auto model, LoadVariant(spec));
    auto& per_corpus = m.emplace_back();
    for (size_t c = 0; c < o.corpora.size(); ++c) {
      ASSIGN_OR_RETURN(CorpusMeasures x, MeasureCorpus(*model, o, c));
      const MemoryPoint* whole = PointAt(x.curve, kWholeDocument);
      std::printf(
          "%-40s %-28s carry-over unrelated %s related %s | re-read after the document %s\n",
          label.c_str(), o.corpora[c].name.c_str(),
          Signed(x.carry.Difference(0, 1, 1 << 30).diff).c_str(),
          Signed(x.carry.Difference(1, 1, 1 << 30).diff).c_str(),
          whole ? CurveCell(*whole).c_str() : "–");
      std::fflush(stdout);
      per_corpus.push_back(std::move(x));
    }
  }
  std::ostringstream md;
  md << "# Memory and carry-over, " << o.split << " split (generated)\n\n"
     << "Generated by `" << o.command << "` (ttt-eval --mode=memory); do not edit by hand. "
     << "Measured through the serving path (`Model::Ingest`, pieces of " << o.piece
     << " tokens). What it means: [model.md](model.md#memory-and-carry-over).\n\n";
  for (const auto& [label, spec] : o.variants) {
    md << "- " << label << ": `" << spec.dir.string() << "`"
       << (spec.eta ? absl::StrCat(", eta ", *spec.eta) : "")
       << (spec.cap ? absl::StrCat(", delta cap ", *spec.cap) : "") << "\n";
  }
  for (const NamedCorpus& c : o.corpora) {
    const int64_t n = o.max_docs > 0 ? std::min<int64_t>(o.max_docs, c.corpus.docs.size())
                                     : static_cast<int64_t>(c.corpus.docs.size());
    md << "- " << c.name << ": " << n << " of " << c.corpus.docs.size() << " documents ("
       << c.corpus.total_tokens << " tokens in all)\n";
  }
  md << "\n## Goals\n\n"
     << Goals(m[0], o) << "\n## Carry-over into a document\n\nEach document's loss after "
     << o.before
     << " other documents read into the same session (no reset) minus the same document read in "
     << "a fresh session (nats/token; positive: the carried state costs), with a 95 % paired "
     << "bootstrap interval over documents. Unrelated: the documents before it come from the "
     << "other corpus; related: they are its next neighbours in its own corpus. Beyond "
     << "attention's reach (layers x (window - 1) tokens of stacked sliding windows: position "
     << m[0][0].reach << "+ for " << o.variants[0].first << ") only the fast weights carry "
     << "anything from the earlier documents, so TTT off must read 0 there.\n\n"
     << "| model | corpus | unrelated, all | unrelated, beyond reach | related, all | related, "
     << "beyond reach |\n|---|---|---|---|---|---|\n";
  for (size_t v = 0; v < m.size(); ++v) {
    for (size_t c = 0; c < m[v].size(); ++c) {
      const CarryOverResult& r = m[v][c].carry;
      md << "| " << o.variants[v].first << " | " << o.corpora[c].name << " | "
         << DiffCell(r.Difference(0, 1, 1 << 30)) << " | "
         << DiffCell(r.Difference(0, m[v][c].reach, 1 << 30)) << " | "
         << DiffCell(r.Difference(1, 1, 1 << 30)) << " | "
         << DiffCell(r.Difference(1, m[v][c].reach, 1 << 30)) << " |\n";
    }
  }
  md << "\n## Memory curve by distance\n\nThe first " << o.length << " tokens of a document "
     << "re-read after the session has read the first k tokens of it (and after all of it), "
     << "against the same tokens read first in a fresh session (targets 2.." << o.length
     << "): the change of their mean loss, a 95 % interval (paired bootstrap over documents), "
     << "and in parentheses how many documents are long enough for k.\n\n| model | corpus |";
  std::vector<int64_t> distances = o.distances;
  distances.push_back(kWholeDocument);
  for (int64_t k : distances) md << " " << DistanceName(k) << " |";
  md << "\n|---|---|";
  for (size_t i = 0; i < distances.size(); ++i) md << "---|";
  md << "\n";
  for (size_t v = 0; v < m.size(); ++v) {
    for (size_t c = 0; c < m[v].size(); ++c) {
      md << "| " << o.variants[v].first << " | " << o.corpora[c].name << " |";
      for (int64_t k : distances) {
        const MemoryPoint* p = PointAt(m[v][c].curve, k);
        md << " " << (p ? CurveCell(*p) : "–") << " |";
      }
      md << "\n";
    }
  }
  return md.str();
}

}  // namespace ttt::train
