#include "train/memory_eval.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "util/files.h"
#include "util/status_macros.h"

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

const MemoryPoint* PointAt(const std::vector<MemoryPoint>& curve, int64_t k, int64_t others = 0) {
  for (const MemoryPoint& p : curve) {
    if (p.distance == k && p.others == others) return &p;
  }
  return nullptr;
}

// Corpus c's carry-over with the fast weights faded to `keep` at document ends (1: none).
absl::StatusOr<CarryOverResult> CarryOver(const engine::Model& model, const MemoryReportOptions& o,
                                          size_t c, double keep) {
  const Corpus& docs = o.corpora[c].corpus;
  const Corpus& unrelated = o.corpora[(c + 1) % o.corpora.size()].corpus;
  const int64_t n = o.max_docs > 0 ? o.max_docs : static_cast<int64_t>(docs.docs.size());
  return ScoreCarryOver(model, docs, {&unrelated, &docs}, o.before, n, o.piece, keep);
}

absl::StatusOr<CorpusMeasures> MeasureCorpus(const engine::Model& model,
                                             const MemoryReportOptions& o, size_t c) {
  const Corpus& docs = o.corpora[c].corpus;
  const Corpus& unrelated = o.corpora[(c + 1) % o.corpora.size()].corpus;
  const int64_t n = o.max_docs > 0 ? o.max_docs : static_cast<int64_t>(docs.docs.size());
  CorpusMeasures m;
  m.reach = AttentionReach(model);
  ASSIGN_OR_RETURN(m.carry, CarryOver(model, o, c, 1));
  std::vector<int64_t> distances = o.distances;
  distances.push_back(kWholeDocument);
  ASSIGN_OR_RETURN(m.curve, ScoreMemoryCurve(model, docs, distances, o.length, n, o.piece,
                                             {&unrelated, o.after_others}));
  return m;
}

// The cache that makes a long report resumable: one text file per (variant, corpus) in
// o.cache_dir, named by a hash of everything its numbers depend on, that key on its first line.
namespace fs = std::filesystem;

std::string CacheKey(const std::string& label, const VariantSpec& spec,
                     const MemoryReportOptions& o, size_t c) {
  std::error_code ec;
  const fs::path weights = spec.dir / "model.safetensors";
  const auto size = fs::file_size(weights, ec);
  const auto mtime = fs::last_write_time(weights, ec).time_since_epoch().count();
  const Corpus& corpus = o.corpora[c].corpus;
  return absl::StrCat(label, "|", fs::absolute(spec.dir).string(), "|", size, "|", mtime, "|",
                      spec.eta.value_or(-1), "|", spec.clip.value_or(-1), "|",
                      spec.cap.value_or(-1), "|", o.corpora[c].name, "|", corpus.docs.size(), "|",
                      corpus.total_tokens, "|", o.corpora[(c + 1) % o.corpora.size()].name, "|",
                      absl::StrJoin(o.distances, ","), "|", o.length, "|", o.before, "|",
                      o.max_docs, "|", o.after_others);
}

fs::path CachePath(const MemoryReportOptions& o, const std::string& key) {
  return o.cache_dir / absl::StrFormat("memory-%016x.txt", std::hash<std::string>{}(key));
}

void WriteLosses(std::ostream& out, const std::vector<PositionLoss>& v) {
  out << v.size() << "\n";
  for (const PositionLoss& p : v) {
    out << p.sum.size();
    for (size_t i = 0; i < p.sum.size(); ++i) {
      out << " " << absl::StrFormat("%.17g", p.sum[i]) << " " << p.count[i];
    }
    out << "\n";
  }
}

bool ReadLosses(std::istream& in, std::vector<PositionLoss>& v) {
  size_t n = 0;
  if (!(in >> n)) return false;
  v.assign(n, {});
  for (PositionLoss& p : v) {
    size_t size = 0;
    if (!(in >> size)) return false;
    p.sum.resize(size);
    p.count.resize(size);
    for (size_t i = 0; i < size; ++i) {
      if (!(in >> p.sum[i] >> p.count[i])) return false;
    }
  }
  return true;
}

std::string SerializeMeasures(const std::string& key, const CorpusMeasures& m) {
  std::ostringstream out;
  out << key << "\n" << m.reach << " " << m.carry.before << " " << m.carry.in_stream.size() << "\n";
  WriteLosses(out, m.carry.fresh);
  for (const auto& v : m.carry.in_stream) WriteLosses(out, v);
  out << m.curve.size() << "\n";
  for (const MemoryPoint& p : m.curve) {
    out << p.distance << " " << p.others << " " << p.docs << "\n";
    WriteLosses(out, p.again);
    WriteLosses(out, p.first);
  }
  return out.str();
}

// The measures cached under `key`, or nullopt when there are none (or they are for another key).
std::optional<CorpusMeasures> LoadCachedMeasures(const fs::path& path, const std::string& key) {
  std::ifstream in(path);
  std::string line;
  if (!in || !std::getline(in, line) || line != key) return std::nullopt;
  CorpusMeasures m;
  size_t conditions = 0, points = 0;
  if (!(in >> m.reach >> m.carry.before >> conditions) || !ReadLosses(in, m.carry.fresh)) {
    return std::nullopt;
  }
  m.carry.in_stream.resize(conditions);
  for (auto& v : m.carry.in_stream) {
    if (!ReadLosses(in, v)) return std::nullopt;
  }
  if (!(in >> points)) return std::nullopt;
  m.curve.resize(points);
  for (MemoryPoint& p : m.curve) {
    if (!(in >> p.distance >> p.others >> p.docs) || !ReadLosses(in, p.again) ||
        !ReadLosses(in, p.first)) {
      return std::nullopt;
    }
  }
  return m;
}

// The measures cached under `key`, else measured by `measure` on the variant (loaded into `model`
// on first need) and cached. `model` stays null while everything comes from the cache.
absl::StatusOr<CorpusMeasures> CachedOrMeasured(
    const MemoryReportOptions& o, const std::string& key, const VariantSpec& spec,
    std::unique_ptr<engine::Model>& model,
    const std::function<absl::StatusOr<CorpusMeasures>(const engine::Model&)>& measure) {
  const fs::path path = o.cache_dir.empty() ? fs::path() : CachePath(o, key);
  if (!path.empty()) {
    if (std::optional<CorpusMeasures> cached = LoadCachedMeasures(path, key)) return *cached;
  }
  if (!model) {
    ASSIGN_OR_RETURN(model, LoadVariant(spec));
  }
  ASSIGN_OR_RETURN(CorpusMeasures m, measure(*model));
  if (!path.empty()) {
    std::error_code ec;
    fs::create_directories(o.cache_dir, ec);
    RETURN_IF_ERROR(util::WriteFileAtomically(path, SerializeMeasures(key, m)));
  }
  return m;
}

// Every corpus measured with one variant: from the cache where it holds them, else measured
// (the model loaded only then) and cached.
absl::StatusOr<std::vector<CorpusMeasures>> MeasureVariant(const std::string& label,
                                                           const VariantSpec& spec,
                                                           const MemoryReportOptions& o) {
  std::vector<CorpusMeasures> out;
  std::unique_ptr<engine::Model> model;
  for (size_t c = 0; c < o.corpora.size(); ++c) {
    ASSIGN_OR_RETURN(CorpusMeasures m, CachedOrMeasured(o, CacheKey(label, spec, o, c), spec, model,
                                                        [&](const engine::Model& m) {
                                                          return MeasureCorpus(m, o, c);
                                                        }));
    const MemoryPoint* whole = PointAt(m.curve, kWholeDocument);
    std::printf(
        "%-40s %-30s carry-over unrelated %s related %s | re-read after the document %s%s\n",
        label.c_str(), o.corpora[c].name.c_str(),
        Signed(m.carry.Difference(0, 1, 1 << 30).diff).c_str(),
        Signed(m.carry.Difference(1, 1, 1 << 30).diff).c_str(),
        whole ? CurveCell(*whole).c_str() : "–", model ? "" : " (cached)");
    std::fflush(stdout);
    out.push_back(std::move(m));
  }
  return out;
}

// The first variant's carry-over with each fade of o.fade_keeps, per corpus ([keep][corpus]),
// cached like the measures (a carry-over and no curve).
absl::StatusOr<std::vector<std::vector<CarryOverResult>>> MeasureFades(
    const MemoryReportOptions& o) {
  const auto& [label, spec] = o.variants[0];
  std::vector<std::vector<CarryOverResult>> out;
  std::unique_ptr<engine::Model> model;
  for (double keep : o.fade_keeps) {
    out.emplace_back();
    for (size_t c = 0; c < o.corpora.size(); ++c) {
      const std::string key = absl::StrCat(CacheKey(label, spec, o, c), "|keep ", keep);
      ASSIGN_OR_RETURN(
          CorpusMeasures faded,
          CachedOrMeasured(o, key, spec, model,
                           [&](const engine::Model& m) -> absl::StatusOr<CorpusMeasures> {
                             CorpusMeasures carry_only;  // no curve
                             carry_only.reach = AttentionReach(m);
                             ASSIGN_OR_RETURN(carry_only.carry, CarryOver(m, o, c, keep));
                             return carry_only;
                           }));
      std::printf("%-40s %-30s keep %.2f at document ends: carry-over unrelated %s related %s%s\n",
                  label.c_str(), o.corpora[c].name.c_str(), keep,
                  Signed(faded.carry.Difference(0, 1, 1 << 30).diff).c_str(),
                  Signed(faded.carry.Difference(1, 1, 1 << 30).diff).c_str(),
                  model ? "" : " (cached)");
      std::fflush(stdout);
      out.back().push_back(std::move(faded.carry));
    }
  }
  return out;
}

// One carry-over table row: unrelated and related, all positions and beyond attention's reach.
std::string CarryCells(const CarryOverResult& r, int64_t reach) {
  return absl::StrCat(DiffCell(r.Difference(0, 1, 1 << 30)), " | ",
                      DiffCell(r.Difference(0, reach, 1 << 30)), " | ",
                      DiffCell(r.Difference(1, 1, 1 << 30)), " | ",
                      DiffCell(r.Difference(1, reach, 1 << 30)));
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
    const MemoryPoint* after = PointAt(m[c].curve, kWholeDocument, o.after_others);
    if (after) {
      md << "| re-reading after the document and " << o.after_others
         << " unrelated documents >= 3 % lower | " << corpus << " | " << CurveCell(*after) << " | "
         << (change(after) <= -0.03 ? "yes" : "**no**") << " |\n";
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
    ASSIGN_OR_RETURN(auto per_corpus, MeasureVariant(label, spec, o));
    m.push_back(std::move(per_corpus));
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
      md << "| " << o.variants[v].first << " | " << o.corpora[c].name << " | "
         << CarryCells(m[v][c].carry, m[v][c].reach) << " |\n";
    }
  }
  if (!o.fade_keeps.empty()) {
    ASSIGN_OR_RETURN(auto fades, MeasureFades(o));
    md << "\n## Carry-over with the fast weights faded at each document end\n\nThe same, with "
       << "each fast-weight delta of " << o.variants[0].first << " multiplied by the fraction "
       << "kept at every document end (the context stays; `Model::FadeFastWeights`: a session "
       << "created with `fade_at_document_end` = 1 - kept). 1: as above; "
       << "`reset_at_document_end` gives 0 in every cell (a fresh session).\n\n| kept | corpus | "
          "unrelated, all | unrelated, beyond "
       << "reach | related, all | related, beyond reach |\n|---|---|---|---|---|---|\n";
    for (size_t c = 0; c < o.corpora.size(); ++c) {
      md << "| 1 | " << o.corpora[c].name << " | " << CarryCells(m[0][c].carry, m[0][c].reach)
         << " |\n";
      for (size_t k = 0; k < o.fade_keeps.size(); ++k) {
        md << "| " << o.fade_keeps[k] << " | " << o.corpora[c].name << " | "
           << CarryCells(fades[k][c], m[0][c].reach) << " |\n";
      }
    }
  }
  md << "\n## Memory curve by distance\n\nThe first " << o.length << " tokens of a document "
     << "re-read after the session has read the first k tokens of it (and after all of it, and "
     << "after all of it and then " << o.after_others << " documents of the other corpus), "
     << "against the same tokens read first in a fresh session (targets 2.." << o.length
     << "): the change of their mean loss, a 95 % interval (paired bootstrap over documents), "
     << "and in parentheses how many documents are long enough for k.\n\n| model | corpus |";
  std::vector<int64_t> distances = o.distances;
  distances.push_back(kWholeDocument);
  for (int64_t k : distances) md << " " << DistanceName(k) << " |";
  if (o.after_others > 0) md << " then " << o.after_others << " unrelated documents |";
  md << "\n|---|---|";
  for (size_t i = 0; i < distances.size() + (o.after_others > 0); ++i) md << "---|";
  md << "\n";
  for (size_t v = 0; v < m.size(); ++v) {
    for (size_t c = 0; c < m[v].size(); ++c) {
      md << "| " << o.variants[v].first << " | " << o.corpora[c].name << " |";
      for (int64_t k : distances) {
        const MemoryPoint* p = PointAt(m[v][c].curve, k);
        md << " " << (p ? CurveCell(*p) : "–") << " |";
      }
      if (o.after_others > 0) {
        const MemoryPoint* p = PointAt(m[v][c].curve, kWholeDocument, o.after_others);
        md << " " << (p ? CurveCell(*p) : "–") << " |";
      }
      md << "\n";
    }
  }
  return md.str();
}

}  // namespace ttt::train
