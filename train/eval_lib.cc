#include "train/eval_lib.h"

#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

#include "absl/strings/str_cat.h"
#include "engine/decode.h"
#include "engine/internal/safetensors.h"
#include "engine/sampler.h"
#include "util/status_macros.h"

namespace ttt::train {

namespace fs = std::filesystem;
using engine::IngestItem;
using engine::IngestLogProbs;
using engine::Model;
using engine::SequenceState;

absl::StatusOr<std::unique_ptr<Model>> LoadVariant(const VariantSpec& spec) {
  ASSIGN_OR_RETURN(engine::ModelConfig config, engine::LoadModelConfig(spec.dir));
  if (spec.clip) config.ttt_clip = *spec.clip;
  if (spec.cap) config.ttt_delta_cap = *spec.cap;
  ASSIGN_OR_RETURN(auto store, engine::WeightStore::Open(spec.dir));
  engine::NamedTensors weights;
  for (const std::string& name : store->Names()) {
    ASSIGN_OR_RETURN(at::Tensor t, store->Load(name));
    weights.emplace_back(name, std::move(t));
  }
  engine::ModelOptions options;
  options.ttt_lr = spec.eta;
  options.ttt_delta_dtype = spec.delta_dtype;
  return ModelFromWeights(std::move(config), weights, options);
}

void PositionLoss::Add(int64_t pos, double nll) {
  if (pos >= static_cast<int64_t>(sum.size())) {
    sum.resize(pos + 1, 0.0);
    count.resize(pos + 1, 0);
  }
  sum[pos] += nll;
  count[pos] += 1;
}

double PositionLoss::Mean(int64_t begin, int64_t end) const {
  const auto [s, n] = Total(begin, end);
  return n > 0 ? s / n : std::numeric_limits<double>::quiet_NaN();
}

std::pair<double, int64_t> PositionLoss::Total(int64_t begin, int64_t end) const {
  double s = 0;
  int64_t n = 0;
  for (int64_t p = std::max<int64_t>(0, begin); p < std::min<int64_t>(end, sum.size()); ++p) {
    s += sum[p];
    n += count[p];
  }
  return {s, n};
}

PairedDifference BootstrapDifference(const std::vector<PositionLoss>& a,
                                     const std::vector<PositionLoss>& b, int64_t begin, int64_t end,
                                     int resamples) {
  // Per document: summed loss of each model and the count of positions scored in the bucket.
  struct Doc {
    double a, b;
    int64_t n;
  };
  std::vector<Doc> docs;
  for (size_t d = 0; d < std::min(a.size(), b.size()); ++d) {
    const auto [sa, na] = a[d].Total(begin, end);
    const auto [sb, nb] = b[d].Total(begin, end);
    if (na > 0 && na == nb) docs.push_back({sa, sb, na});
  }
  const double nan = std::numeric_limits<double>::quiet_NaN();
  if (docs.empty()) return {nan, nan, nan};
  auto diff_of = [](double sa, double sb, int64_t n) { return (sa - sb) / static_cast<double>(n); };
  PairedDifference r;
  double sa = 0, sb = 0;
  int64_t n = 0;
  for (const Doc& d : docs) sa += d.a, sb += d.b, n += d.n;
  r.diff = diff_of(sa, sb, n);
  std::mt19937_64 rng(12);
  std::uniform_int_distribution<size_t> pick(0, docs.size() - 1);
  std::vector<double> draws;
  for (int i = 0; i < resamples; ++i) {
    double ra = 0, rb = 0;
    int64_t rn = 0;
    for (size_t k = 0; k < docs.size(); ++k) {
      const Doc& d = docs[pick(rng)];
      ra += d.a, rb += d.b, rn += d.n;
    }
    draws.push_back(diff_of(ra, rb, rn));
  }
  std::sort(draws.begin(), draws.end());
  auto quantile = [&](double q) { return draws[static_cast<size_t>(q * (draws.size() - 1))]; };
  r.low = resamples > 0 ? quantile(0.025) : r.diff;
  r.high = resamples > 0 ? quantile(0.975) : r.diff;
  return r;
}

namespace {

int64_t Bos(const Model& model) {
  return model.config().bos_token_id >= 0 ? model.config().bos_token_id : 1;
}

// One session's input: its tokens and where each document starts in them.
struct Stream {
  std::vector<int32_t> tokens;
  std::vector<int64_t> doc_starts;      // ascending; doc_starts[0] = 0
  size_t first_doc = 0;                 // the corpus index of its first document
  size_t DocIndex(int64_t pos) const {  // the corpus index of the document holding `pos`
    return first_doc +
           (std::upper_bound(doc_starts.begin(), doc_starts.end(), pos) - doc_starts.begin() - 1);
  }
  int64_t DocEnd(int64_t pos) const {  // end of the document holding `pos`
    auto it = std::upper_bound(doc_starts.begin(), doc_starts.end(), pos);
    return it == doc_starts.end() ? static_cast<int64_t>(tokens.size()) : *it;
  }
  int64_t DocStart(int64_t pos) const {
    return *(std::upper_bound(doc_starts.begin(), doc_starts.end(), pos) - 1);
  }
};

std::vector<Stream> MakeStreams(const Corpus& docs, int64_t min_stream, int32_t bos) {
  std::vector<Stream> streams(1);
  for (size_t i = 0; i < docs.docs.size(); ++i) {
    const auto& d = docs.docs[i];
    if (static_cast<int64_t>(streams.back().tokens.size()) >= min_stream) {
      streams.emplace_back().first_doc = i;
    }
    Stream& s = streams.back();
    s.doc_starts.push_back(static_cast<int64_t>(s.tokens.size()));
    s.tokens.push_back(bos);
    s.tokens.insert(s.tokens.end(), d.begin(), d.end());
  }
  // A last stream shorter than the others joins the one before it.
  if (streams.size() > 1 && static_cast<int64_t>(streams.back().tokens.size()) < min_stream) {
    Stream last = std::move(streams.back());
    streams.pop_back();
    Stream& s = streams.back();
    const int64_t shift = static_cast<int64_t>(s.tokens.size());
    for (int64_t start : last.doc_starts) s.doc_starts.push_back(start + shift);
    s.tokens.insert(s.tokens.end(), last.tokens.begin(), last.tokens.end());
  }
  return streams;
}

// Feeds `tokens` into `states` (in parallel, ragged) in pieces of `piece` and calls
// on_logprob(item, index, logprob) for each scored token (every one but a stream's first).
template <typename F>
absl::Status FeedAll(const Model& model, std::vector<SequenceState*> states,
                     const std::vector<std::vector<int32_t>>& tokens, int64_t piece, F on_logprob) {
  std::vector<size_t> done(states.size(), 0);
  while (true) {
    std::vector<IngestItem> items;
    std::vector<size_t> owner;
    for (size_t i = 0; i < states.size(); ++i) {
      if (done[i] >= tokens[i].size()) continue;
      const size_t take = std::min<size_t>(piece, tokens[i].size() - done[i]);
      items.push_back(
          {states[i], {tokens[i].begin() + done[i], tokens[i].begin() + done[i] + take}});
      owner.push_back(i);
    }
    if (items.empty()) return absl::OkStatus();
    ASSIGN_OR_RETURN(auto lps, model.Ingest(absl::MakeSpan(items)));
    for (size_t k = 0; k < items.size(); ++k) {
      for (size_t j = 0; j < lps[k].size(); ++j) {
        if (!std::isnan(lps[k][j])) on_logprob(owner[k], done[owner[k]] + j, lps[k][j]);
      }
      done[owner[k]] += items[k].tokens.size();
    }
  }
}

}  // namespace

absl::StatusOr<StreamResult> ScoreStreams(const Model& model, const Corpus& docs,
                                          int64_t min_stream, bool reset_at_document_end,
                                          int64_t piece) {
  c10::InferenceMode guard;
  const std::vector<Stream> streams =
      MakeStreams(docs, min_stream, static_cast<int32_t>(Bos(model)));
  std::vector<SequenceState> states;
  for (size_t i = 0; i < streams.size(); ++i) states.push_back(model.NewSequence());
  std::vector<int64_t> at(streams.size(), 0);
  StreamResult r;
  r.by_document.resize(docs.docs.size());
  while (true) {
    std::vector<IngestItem> items;
    std::vector<size_t> owner;
    for (size_t i = 0; i < streams.size(); ++i) {
      const Stream& s = streams[i];
      if (at[i] >= static_cast<int64_t>(s.tokens.size())) continue;
      const int64_t end = std::min(at[i] + piece, s.DocEnd(at[i]));
      items.push_back({&states[i], {s.tokens.begin() + at[i], s.tokens.begin() + end}});
      owner.push_back(i);
    }
    if (items.empty()) break;
    ASSIGN_OR_RETURN(auto lps, model.Ingest(absl::MakeSpan(items)));
    for (size_t k = 0; k < items.size(); ++k) {
      const size_t i = owner[k];
      const Stream& s = streams[i];
      for (size_t j = 0; j < lps[k].size(); ++j) {
        const int64_t pos = at[i] + static_cast<int64_t>(j);
        if (std::isnan(lps[k][j]) || pos == s.DocStart(pos)) continue;  // a document's bos
        r.by_stream_position.Add(pos, -lps[k][j]);
        r.by_document_position.Add(pos - s.DocStart(pos), -lps[k][j]);
        r.by_document[s.DocIndex(pos)].Add(pos - s.DocStart(pos), -lps[k][j]);
      }
      at[i] += static_cast<int64_t>(items[k].tokens.size());
      if (reset_at_document_end && at[i] == s.DocEnd(at[i] - 1)) model.Reset(states[i]);
    }
  }
  r.delta_norms_end = states[0].DeltaNorms();
  return r;
}

absl::StatusOr<RereadResult> ScoreReread(const Model& model, const Corpus& docs, int64_t num_docs,
                                         int64_t length, int64_t others, int64_t piece) {
  c10::InferenceMode guard;
  const int32_t bos = static_cast<int32_t>(Bos(model));
  const int64_t n = std::min<int64_t>(num_docs, docs.docs.size());
  RereadResult r;
  r.docs = n;
  r.others = others;
  auto doc = [&](int64_t i) -> const std::vector<int32_t>& {
    return docs.docs[i % docs.docs.size()];
  };
  auto head = [&](int64_t i) {
    const auto& d = doc(i);
    return std::vector<int32_t>(d.begin(), d.begin() + std::min<int64_t>(length, d.size()));
  };
  // Sum of the losses of targets 1.. of the last `head` fed to each state.
  auto score_heads = [&](std::vector<SequenceState>& states,
                         bool with_bos) -> absl::StatusOr<double> {
    std::vector<SequenceState*> ptrs;
    std::vector<std::vector<int32_t>> tokens;
    for (int64_t i = 0; i < n; ++i) {
      ptrs.push_back(&states[i]);
      std::vector<int32_t> t = head(i);
      if (with_bos) t.insert(t.begin(), bos);
      tokens.push_back(std::move(t));
    }
    const int64_t skip = with_bos ? 2 : 1;  // bos and the head's first token are not compared
    double sum = 0;
    int64_t count = 0;
    RETURN_IF_ERROR(FeedAll(model, ptrs, tokens, piece, [&](size_t, size_t j, float lp) {
      if (static_cast<int64_t>(j) >= skip) {
        sum -= lp;
        ++count;
      }
    }));
    return sum / std::max<int64_t>(1, count);
  };
  auto read_docs = [&](std::vector<SequenceState>& states, int64_t count) -> absl::Status {
    for (int64_t k = 0; k < count; ++k) {
      std::vector<SequenceState*> ptrs;
      std::vector<std::vector<int32_t>> tokens;
      for (int64_t i = 0; i < n; ++i) {
        ptrs.push_back(&states[i]);
        std::vector<int32_t> t = {bos};
        const auto& d = doc(i + k * 7);  // the document, then others (stride 7: another genre)
        t.insert(t.end(), d.begin(), d.end());
        tokens.push_back(std::move(t));
      }
      RETURN_IF_ERROR(FeedAll(model, ptrs, tokens, piece, [](size_t, size_t, float) {}));
    }
    return absl::OkStatus();
  };
  auto fresh = [&] {
    std::vector<SequenceState> s;
    for (int64_t i = 0; i < n; ++i) s.push_back(model.NewSequence());
    return s;
  };
  {
    auto states = fresh();
    ASSIGN_OR_RETURN(r.first, score_heads(states, /*with_bos=*/true));
  }
  {
    auto states = fresh();
    RETURN_IF_ERROR(read_docs(states, 1));
    ASSIGN_OR_RETURN(r.after_doc, score_heads(states, /*with_bos=*/false));
  }
  if (others > 0) {
    auto states = fresh();
    RETURN_IF_ERROR(read_docs(states, 1 + others));
    ASSIGN_OR_RETURN(r.after_others, score_heads(states, /*with_bos=*/false));
  }
  return r;
}

namespace {

std::vector<SequenceState*> Pointers(std::vector<SequenceState>& states) {
  std::vector<SequenceState*> p;
  for (auto& s : states) p.push_back(&s);
  return p;
}

// Per target, its losses (position in the target, bos = 0) after `before` documents of `other`,
// the fast weights faded to `keep` at each document end (1: as they are).
absl::StatusOr<std::vector<PositionLoss>> ScoreAfter(const Model& model, const Corpus& targets,
                                                     const Corpus& other, int64_t before, int64_t n,
                                                     int64_t piece, double keep) {
  const int32_t bos = static_cast<int32_t>(Bos(model));
  std::vector<PositionLoss> out(n);
  std::vector<SequenceState> states;
  std::vector<size_t> target_bos(n);  // where the target's bos sits in the last feed
  // feeds[f][i]: what session i reads in feed f, documents as bos + tokens, the target last. One
  // feed without a fade (the same numbers: results do not depend on how a stream is split), else
  // one per document with the fade between them.
  std::vector<std::vector<std::vector<int32_t>>> feeds(keep == 1 ? 1 : before + 1,
                                                       std::vector<std::vector<int32_t>>(n));
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t s = 0; s <= before; ++s) {
      const auto& d = s < before ? other.docs[(i + 1 + s) % other.docs.size()] : targets.docs[i];
      std::vector<int32_t>& t = feeds[keep == 1 ? 0 : s][i];
      if (s == before) target_bos[i] = t.size();
      t.push_back(bos);
      t.insert(t.end(), d.begin(), d.end());
    }
    states.push_back(model.NewSequence());
  }
  for (size_t f = 0; f < feeds.size(); ++f) {
    if (f > 0) {
      for (SequenceState& state : states) model.FadeFastWeights(state, keep);
    }
    const bool target_feed = f + 1 == feeds.size();
    RETURN_IF_ERROR(
        FeedAll(model, Pointers(states), feeds[f], piece, [&](size_t i, size_t j, float lp) {
          if (target_feed && j > target_bos[i]) out[i].Add(j - target_bos[i], -lp);
        }));
  }
  return out;
}

}  // namespace

absl::StatusOr<CarryOverResult> ScoreCarryOver(const Model& model, const Corpus& targets,
                                               const std::vector<const Corpus*>& preceding,
                                               int64_t before, int64_t num_docs, int64_t piece,
                                               double keep) {
  c10::InferenceMode guard;
  if (!(keep >= 0 && keep <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("carry-over: the fraction of the fast weights kept at a document end must be "
                     "in [0, 1], got ",
                     keep));
  }
  if (before < 0) {
    return absl::InvalidArgumentError(absl::StrCat("carry-over: before ", before, " is negative"));
  }
  for (const Corpus* c : preceding) {
    const bool self = c == &targets;
    if (c->docs.empty() || (self && static_cast<int64_t>(c->docs.size()) <= before)) {
      return absl::InvalidArgumentError(
          absl::StrCat("carry-over reads ", before,
                       " documents before each target, but a preceding corpus "
                       "has only ",
                       c->docs.size(),
                       self ? " (the targets' own, where a target must not follow itself)" : ""));
    }
  }
  const int64_t n = std::min<int64_t>(num_docs, targets.docs.size());
  CarryOverResult r;
  r.before = before;
  ASSIGN_OR_RETURN(r.fresh, ScoreAfter(model, targets, targets, 0, n, piece, 1));
  for (const Corpus* c : preceding) {
    ASSIGN_OR_RETURN(auto after, ScoreAfter(model, targets, *c, before, n, piece, keep));
    r.in_stream.push_back(std::move(after));
  }
  return r;
}

double MemoryPoint::FirstMean() const {
  double s = 0;
  int64_t c = 0;
  for (size_t d = 0; d < std::min(first.size(), again.size()); ++d) {
    if (again[d].sum.empty()) continue;  // too short for this distance
    const auto [ds, dc] = first[d].Total(0, 1 << 30);
    s += ds, c += dc;
  }
  return c > 0 ? s / c : std::numeric_limits<double>::quiet_NaN();
}

double MemoryPoint::AgainMean() const {
  double s = 0;
  int64_t c = 0;
  for (const PositionLoss& p : again) {
    const auto [ds, dc] = p.Total(0, 1 << 30);
    s += ds, c += dc;
  }
  return c > 0 ? s / c : std::numeric_limits<double>::quiet_NaN();
}

absl::StatusOr<std::vector<MemoryPoint>> ScoreMemoryCurve(const Model& model, const Corpus& docs,
                                                          const std::vector<int64_t>& distances,
                                                          int64_t length, int64_t num_docs,
                                                          int64_t piece, AfterOthers after_others) {
  c10::InferenceMode guard;
  if (length < 2) return absl::InvalidArgumentError("the memory curve re-reads at least 2 tokens");
  std::vector<int64_t> ks = distances;
  std::sort(ks.begin(), ks.end());
  if (ks.empty() || ks.front() < 1) {
    return absl::InvalidArgumentError("memory-curve distances must be >= 1 token");
  }
  if (after_others.docs > 0 &&
      (ks.back() != kWholeDocument || !after_others.corpus || after_others.corpus->docs.empty())) {
    return absl::InvalidArgumentError(
        "re-reading after other documents needs the whole-document distance and a non-empty "
        "corpus of other documents");
  }
  const int32_t bos = static_cast<int32_t>(Bos(model));
  const size_t n = std::min<size_t>(num_docs, docs.docs.size());
  auto head = [&](size_t i) {
    const auto& d = docs.docs[i];
    return std::vector<int32_t>(d.begin(), d.begin() + std::min<int64_t>(length, d.size()));
  };
  // The first reading, once per document.
  std::vector<PositionLoss> first(n);
  {
    std::vector<SequenceState> states;
    std::vector<SequenceState*> ptrs;
    std::vector<std::vector<int32_t>> tokens;
    states.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      states.push_back(model.NewSequence());
      ptrs.push_back(&states.back());
      std::vector<int32_t> t = {bos};
      const auto h = head(i);
      t.insert(t.end(), h.begin(), h.end());
      tokens.push_back(std::move(t));
    }
    RETURN_IF_ERROR(FeedAll(model, ptrs, tokens, piece, [&](size_t i, size_t j, float lp) {
      if (j >= 2) first[i].Add(static_cast<int64_t>(j) - 1, -lp);
    }));
  }
  // Feeds each of `states` its prefix, then its document's head, and scores the head's targets
  // 1.. (state e belongs to document eligible[e]).
  auto reread = [&](const std::vector<SequenceState*>& states,
                    const std::vector<std::vector<int32_t>>& prefixes,
                    const std::vector<size_t>& eligible) -> absl::StatusOr<MemoryPoint> {
    MemoryPoint p;
    p.docs = static_cast<int64_t>(eligible.size());
    p.first = first;
    p.again.resize(n);
    std::vector<std::vector<int32_t>> tokens;
    for (size_t e = 0; e < eligible.size(); ++e) {
      std::vector<int32_t> t = prefixes[e];
      const auto h = head(eligible[e]);
      t.insert(t.end(), h.begin(), h.end());
      tokens.push_back(std::move(t));
    }
    RETURN_IF_ERROR(FeedAll(model, states, tokens, piece, [&](size_t e, size_t j, float lp) {
      const size_t skip = prefixes[e].size() + 1;  // the head's first token is not compared
      if (j >= skip) p.again[eligible[e]].Add(static_cast<int64_t>(j - skip) + 1, -lp);
    }));
    return p;
  };
  // One session per document reads it up to each distance in turn; each distance forks it.
  std::vector<SequenceState> reading;
  reading.reserve(n);
  for (size_t i = 0; i < n; ++i) reading.push_back(model.NewSequence());
  std::vector<int64_t> read(n, 0);  // document tokens each session has read so far
  std::vector<MemoryPoint> curve;
  for (int64_t k : ks) {
    std::vector<SequenceState*> ptrs;
    std::vector<std::vector<int32_t>> tokens;
    std::vector<size_t> eligible;
    for (size_t i = 0; i < n; ++i) {
      const auto& d = docs.docs[i];
      const int64_t size = static_cast<int64_t>(d.size());
      const int64_t upto = k == kWholeDocument ? size : k;
      if (size < upto) continue;
      std::vector<int32_t> t;
      if (read[i] == 0) t.push_back(bos);
      t.insert(t.end(), d.begin() + read[i], d.begin() + upto);
      read[i] = upto;
      ptrs.push_back(&reading[i]);
      tokens.push_back(std::move(t));
      eligible.push_back(i);
    }
    RETURN_IF_ERROR(FeedAll(model, ptrs, tokens, piece, [](size_t, size_t, float) {}));
    std::vector<SequenceState> forks;
    forks.reserve(eligible.size());
    ptrs.clear();
    for (size_t i : eligible) {
      forks.push_back(reading[i].Clone());
      ptrs.push_back(&forks.back());
    }
    ASSIGN_OR_RETURN(MemoryPoint p,
                     reread(ptrs, std::vector<std::vector<int32_t>>(eligible.size()), eligible));
    p.distance = k;
    curve.push_back(std::move(p));
  }
  if (after_others.docs > 0) {
    // Every session has read its whole document: now other documents, then the head (no fork:
    // the sessions are not needed after this).
    const Corpus& others = *after_others.corpus;
    std::vector<SequenceState*> ptrs;
    std::vector<std::vector<int32_t>> prefixes;
    std::vector<size_t> all;
    for (size_t i = 0; i < n; ++i) {
      std::vector<int32_t> t;
      for (int64_t j = 0; j < after_others.docs; ++j) {
        const auto& d = others.docs[(i + 1 + j) % others.docs.size()];
        t.push_back(bos);
        t.insert(t.end(), d.begin(), d.end());
      }
      ptrs.push_back(&reading[i]);
      prefixes.push_back(std::move(t));
      all.push_back(i);
    }
    ASSIGN_OR_RETURN(MemoryPoint p, reread(ptrs, prefixes, all));
    p.distance = kWholeDocument;
    p.others = after_others.docs;
    curve.push_back(std::move(p));
  }
  return curve;
}

namespace {

// ScoreRecall's episodes for `model`, in batches of at most 32, drawn with a fixed seed.
std::vector<std::vector<RecallEpisode>> RecallEpisodes(const Model& model, const Corpus& filler,
                                                       int64_t episodes) {
  RecallSpec spec = RecallSpecFor(model.config().vocab_size);
  const auto window = model.attention_window();
  spec.window = window ? *window : 64;
  spec.chunk = model.config().ttt_chunk > 0 ? model.config().ttt_chunk : 64;
  std::mt19937_64 rng(2026);  // the same episodes for every model
  std::vector<std::vector<RecallEpisode>> batches;
  for (int64_t done = 0; done < episodes; done += 32) {
    batches.emplace_back();
    for (int64_t i = 0; i < std::min<int64_t>(32, episodes - done); ++i) {
      batches.back().push_back(MakeRecallEpisode(spec, filler, Bos(model), rng));
    }
  }
  return batches;
}

}  // namespace

RecallResult ScoreRecall(const Model& model, const Corpus& filler, int64_t episodes) {
  c10::InferenceMode guard;
  int64_t hits = 0, total = 0;
  double loss = 0;
  for (const std::vector<RecallEpisode>& eps : RecallEpisodes(model, filler, episodes)) {
    const int64_t n = static_cast<int64_t>(eps.size());
    std::vector<int64_t> flat;
    for (const RecallEpisode& ep : eps) flat.insert(flat.end(), ep.tokens.begin(), ep.tokens.end());
    // The batched training forward computes what Ingest does (tests/engine/train_forward_test.cc).
    at::Tensor x = at::tensor(flat, at::kLong).view({n, -1});
    at::Tensor logp = at::log_softmax(ForwardTrain(model, x).to(at::kFloat), -1);
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

absl::StatusOr<RecallResult> ScoreRecallThroughSessions(
    const Model& model, const Corpus& filler, int64_t episodes,
    const std::function<void(SequenceState&)>& between) {
  c10::InferenceMode guard;
  engine::Sampler greedy(engine::SamplingParams{.temperature = 0});
  int64_t hits = 0, total = 0;
  double loss = 0;
  for (const std::vector<RecallEpisode>& eps : RecallEpisodes(model, filler, episodes)) {
    // Every episode of a spec has the same layout: feed them side by side, segment by segment.
    const RecallEpisode& layout = eps.front();
    std::vector<SequenceState> states;
    for (size_t i = 0; i < eps.size(); ++i) states.push_back(model.NewSequence());
    auto feed = [&](int64_t from, int64_t to) -> absl::StatusOr<std::vector<IngestLogProbs>> {
      std::vector<IngestItem> items;
      for (size_t i = 0; i < eps.size(); ++i) {
        items.push_back({&states[i], {eps[i].tokens.begin() + from, eps[i].tokens.begin() + to}});
      }
      return model.Ingest(absl::MakeSpan(items));
    };
    RETURN_IF_ERROR(feed(0, layout.query_begin).status());
    for (SequenceState& state : states) between(state);
    int64_t at = layout.query_begin;
    for (int64_t t : layout.value_positions) {
      RETURN_IF_ERROR(feed(at, t).status());  // up to and with the query's key
      for (size_t i = 0; i < eps.size(); ++i) {
        ASSIGN_OR_RETURN(engine::DecodedToken next, engine::DecodeNext(states[i], greedy));
        hits += next.token == eps[i].tokens[t];
      }
      ASSIGN_OR_RETURN(auto lps, feed(t, t + 1));  // the value: its log-probability
      for (const IngestLogProbs& lp : lps) loss -= lp[0];
      total += static_cast<int64_t>(eps.size());
      at = t + 1;
    }
  }
  return RecallResult{static_cast<double>(hits) / total, loss / total};
}

}  // namespace ttt::train
