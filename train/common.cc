// Corpora, the recall task, initialisation and model writing for ttt-train and ttt-eval.
#include "train/common.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "util/files.h"
#include "util/status_macros.h"

namespace ttt::train {

namespace fs = std::filesystem;
using engine::ModelConfig;
using engine::NamedTensors;

absl::StatusOr<Corpus> LoadTokenIds(const fs::path& path, int64_t vocab_size) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open token file ", path.string()));
  Corpus corpus;
  std::string line;
  int64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    std::istringstream fields(line);
    std::vector<int32_t> doc;
    std::string field;
    while (fields >> field) {
      char* end = nullptr;
      long id = std::strtol(field.c_str(), &end, 10);
      if (*end != '\0' || id < 0 || id >= vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat(path.string(), ":", line_no, ": token '",
                                                       field, "' is not an id below ", vocab_size));
      }
      doc.push_back(static_cast<int32_t>(id));
    }
    if (doc.empty()) continue;
    corpus.total_tokens += static_cast<int64_t>(doc.size());
    corpus.docs.push_back(std::move(doc));
  }
  if (corpus.docs.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(path.string(), " holds no documents"));
  }
  return corpus;
}

namespace {

// Index of a document drawn with probability proportional to its length.
size_t DrawDoc(const Corpus& corpus, std::mt19937_64& rng) {
  std::uniform_int_distribution<int64_t> pick(0, corpus.total_tokens - 1);
  int64_t t = pick(rng);
  for (size_t d = 0; d < corpus.docs.size(); ++d) {
    t -= static_cast<int64_t>(corpus.docs[d].size());
    if (t < 0) return d;
  }
  return corpus.docs.size() - 1;
}

// Appends `length` tokens of the stream starting at (doc, offset) to `out`, continuing into the
// following documents (eos, bos between them) when one ends.
void AppendStream(const Corpus& corpus, size_t doc, size_t offset, int64_t length, int64_t bos,
                  int64_t eos, std::vector<int64_t>& out) {
  while (length > 0) {
    const auto& d = corpus.docs[doc];
    for (; offset < d.size() && length > 0; ++offset, --length) out.push_back(d[offset]);
    if (length > 0) {
      out.push_back(eos);
      if (--length > 0) {
        out.push_back(bos);
        --length;
      }
      doc = (doc + 1) % corpus.docs.size();
      offset = 0;
    }
  }
}

}  // namespace

at::Tensor SampleTextWindows(const Corpus& corpus, int64_t batch, int64_t length, int64_t bos,
                             int64_t eos, double bos_prob, std::mt19937_64& rng) {
  std::vector<int64_t> flat;
  flat.reserve(batch * length);
  std::uniform_real_distribution<double> coin(0.0, 1.0);
  for (int64_t b = 0; b < batch; ++b) {
    size_t doc = DrawDoc(corpus, rng);
    const int64_t n = static_cast<int64_t>(corpus.docs[doc].size());
    if (coin(rng) < bos_prob) {
      flat.push_back(bos);
      AppendStream(corpus, doc, 0, length - 1, bos, eos, flat);
    } else {
      std::uniform_int_distribution<int64_t> off(0, std::max<int64_t>(0, n - length));
      AppendStream(corpus, doc, off(rng), length, bos, eos, flat);
    }
  }
  return at::tensor(flat, at::kLong).view({batch, length});
}

at::Tensor SampleRereadWindows(const Corpus& corpus, int64_t batch, int64_t length, int64_t reread,
                               int64_t bos, int64_t eos, std::mt19937_64& rng) {
  std::vector<int64_t> flat;
  flat.reserve(batch * length);
  for (int64_t b = 0; b < batch; ++b) {
    const size_t doc = DrawDoc(corpus, rng);
    flat.push_back(bos);
    AppendStream(corpus, doc, 0, length - 1 - reread, bos, eos, flat);
    AppendStream(corpus, doc, 0, reread, bos, eos, flat);
  }
  return at::tensor(flat, at::kLong).view({batch, length});
}

namespace {

// `batch` rows of `length` tokens, each `make_row(document, row, windows)` for a document drawn
// by length (it may set the row's masks in `windows`), padded with eos; the targets of the tokens
// it returned count.
template <typename MakeRow>
DocumentWindows SampleDocumentRows(const Corpus& corpus, int64_t batch, int64_t length, int64_t eos,
                                   std::mt19937_64& rng, MakeRow make_row) {
  DocumentWindows w;
  w.counted = at::zeros({batch, length - 1});
  w.first = at::zeros({batch, length - 1});
  w.again = at::zeros({batch, length - 1});
  std::vector<int64_t> flat;
  flat.reserve(batch * length);
  for (int64_t b = 0; b < batch; ++b) {
    std::vector<int64_t> row = make_row(corpus.docs[DrawDoc(corpus, rng)], b, w);
    w.counted[b].slice(0, 0, static_cast<int64_t>(row.size()) - 1).fill_(1);
    row.resize(length, eos);
    flat.insert(flat.end(), row.begin(), row.end());
  }
  w.tokens = at::tensor(flat, at::kLong).view({batch, length});
  return w;
}

}  // namespace

DocumentWindows SampleDocumentWindows(const Corpus& corpus, int64_t batch, int64_t length,
                                      int64_t bos, int64_t eos, double bos_prob,
                                      std::mt19937_64& rng) {
  std::uniform_real_distribution<double> coin(0.0, 1.0);
  auto make_row = [&](const std::vector<int32_t>& doc, int64_t, DocumentWindows&) {
    const int64_t n = static_cast<int64_t>(doc.size());
    std::vector<int64_t> row;
    if (n <= length || coin(rng) < bos_prob) {
      row.push_back(bos);
      row.insert(row.end(), doc.begin(), doc.begin() + std::min(n, length - 1));
      if (static_cast<int64_t>(row.size()) < length) row.push_back(eos);
    } else {
      std::uniform_int_distribution<int64_t> off(0, n - length);
      const int64_t at = off(rng);
      row.assign(doc.begin() + at, doc.begin() + at + length);
    }
    return row;
  };
  return SampleDocumentRows(corpus, batch, length, eos, rng, make_row);
}

DocumentWindows SampleDocumentRereadWindows(const Corpus& corpus, int64_t batch, int64_t length,
                                            int64_t reread, int64_t bos, int64_t eos,
                                            std::mt19937_64& rng) {
  auto make_row = [&](const std::vector<int32_t>& doc, int64_t b, DocumentWindows& w) {
    const int64_t n = static_cast<int64_t>(doc.size());
    const int64_t again = std::min(reread, n);
    const int64_t read = std::min(n, length - 1 - again);
    std::vector<int64_t> row = {bos};
    row.insert(row.end(), doc.begin(), doc.begin() + read);
    row.insert(row.end(), doc.begin(), doc.begin() + again);
    // doc[1 .. again-1] sit at positions 2 .. again (targets 1 .. again-1) the first time and at
    // read + 2 .. read + again (targets read + 1 .. read + again - 1) re-read: the same tokens.
    w.first[b].slice(0, 1, again).fill_(1);
    w.again[b].slice(0, read + 1, read + again).fill_(1);
    return row;
  };
  return SampleDocumentRows(corpus, batch, length, eos, rng, make_row);
}

namespace {

// Where each pair's key goes: from position 1, two tokens a pair, a pair that would straddle a
// chunk edge moved past it (the TTT target's conv does not reach across chunks, so a split pair
// could not be stored). With 1 + 2 * pairs <= chunk nothing moves.
std::vector<int64_t> PairStarts(const RecallSpec& spec) {
  std::vector<int64_t> starts;
  int64_t at = 1;
  for (int64_t i = 0; i < spec.pairs; ++i) {
    if (spec.chunk > 1 && at % spec.chunk == spec.chunk - 1) ++at;
    starts.push_back(at);
    at += 2;
  }
  return starts;
}

int64_t PairsEnd(const RecallSpec& spec) {
  return spec.pairs > 0 ? PairStarts(spec).back() + 2 : 1;
}

}  // namespace

RecallSpec RecallSpecFor(int64_t vocab_size) {
  RecallSpec spec;
  if (spec.value_base + spec.num_keys > vocab_size) {
    spec.key_base = vocab_size / 3;
    spec.value_base = 2 * vocab_size / 3;
  }
  return spec;
}

int64_t RecallLength(const RecallSpec& spec) {
  const int64_t need = PairsEnd(spec) - 1 + spec.window;  // first query must not see any pair
  const int64_t query_begin = (need + spec.chunk - 1) / spec.chunk * spec.chunk;
  return query_begin + 2 * spec.pairs;
}

RecallEpisode MakeRecallEpisode(const RecallSpec& spec, const Corpus& filler, int64_t bos,
                                std::mt19937_64& rng) {
  RecallEpisode ep;
  const int64_t length = RecallLength(spec);
  ep.query_begin = length - 2 * spec.pairs;
  ep.filler_begin = PairsEnd(spec);
  ep.tokens.reserve(length);
  ep.tokens.push_back(bos);

  std::vector<int64_t> keys(spec.num_keys);
  for (int64_t i = 0; i < spec.num_keys; ++i) keys[i] = spec.key_base + i;
  std::shuffle(keys.begin(), keys.end(), rng);
  keys.resize(spec.pairs);
  std::uniform_int_distribution<int64_t> value(0, spec.num_keys - 1);
  std::vector<int64_t> values(spec.pairs);
  const std::vector<int64_t> starts = PairStarts(spec);
  for (int64_t i = 0; i < spec.pairs; ++i) {
    values[i] = spec.value_base + value(rng);
    // A chunk's last position stays free; bos separates documents in the filler too.
    while (static_cast<int64_t>(ep.tokens.size()) < starts[i]) ep.tokens.push_back(bos);
    ep.tokens.push_back(keys[i]);
    ep.tokens.push_back(values[i]);
  }

  // Natural text: a stretch of one document (the next ones if it is short).
  const int64_t filler_len = ep.query_begin - ep.filler_begin;
  size_t doc = DrawDoc(filler, rng);
  const int64_t n = static_cast<int64_t>(filler.docs[doc].size());
  std::uniform_int_distribution<int64_t> off(0, std::max<int64_t>(0, n - filler_len));
  AppendStream(filler, doc, off(rng), filler_len, bos, bos, ep.tokens);

  std::vector<int64_t> order(spec.pairs);
  for (int64_t i = 0; i < spec.pairs; ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), rng);
  for (int64_t i : order) {
    ep.tokens.push_back(keys[i]);
    ep.value_positions.push_back(static_cast<int64_t>(ep.tokens.size()));
    ep.tokens.push_back(values[i]);
  }
  return ep;
}

ModelConfig MakeConfig(const FreshModelSpec& spec) {
  ModelConfig c;
  c.model_type = "llama";
  c.vocab_size = spec.vocab_size;
  c.hidden_size = spec.hidden_size;
  c.intermediate_size = spec.intermediate_size;
  c.num_hidden_layers = spec.layers;
  c.num_attention_heads = spec.heads;
  c.num_key_value_heads = spec.kv_heads;
  c.head_dim = spec.hidden_size / spec.heads;
  c.rope_theta = 10000.0;
  c.rms_norm_eps = 1e-6;
  c.tie_word_embeddings = spec.tie_embeddings;
  if (spec.window > 0) c.sliding_window = spec.window;
  c.bos_token_id = spec.bos;
  c.eos_token_id = spec.eos;
  c.ttt_mode = spec.ttt;
  if (spec.ttt) {
    c.ttt_layers = spec.ttt_layers;
    c.ttt_lr = spec.ttt_lr;
    c.ttt_chunk = spec.ttt_chunk;
    c.ttt_target = engine::TttTarget::kInputEmbed;
    c.ttt_proj = true;
  }
  return c;
}

namespace {

at::Tensor TttConv(const ModelConfig& c) { return at::zeros({c.hidden_size, 1, 5}, at::kFloat); }
at::Tensor TttProj(const ModelConfig& c) { return at::eye(c.hidden_size, at::kFloat); }

}  // namespace

NamedTensors InitWeights(const ModelConfig& c, uint64_t seed) {
  at::manual_seed(seed);
  const double std = 0.02;
  const double out_std = std / std::sqrt(2.0 * static_cast<double>(c.num_hidden_layers));
  auto normal = [](std::vector<int64_t> shape, double s) {
    return at::randn(shape, at::kFloat) * s;
  };
  const int64_t d = c.hidden_size, q = c.num_attention_heads * c.head_dim,
                kv = c.num_key_value_heads * c.head_dim, ff = c.intermediate_size;
  NamedTensors w;
  w.emplace_back("model.embed_tokens.weight", normal({c.vocab_size, d}, std));
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    w.emplace_back(p + "input_layernorm.weight", at::ones({d}, at::kFloat));
    w.emplace_back(p + "self_attn.q_proj.weight", normal({q, d}, std));
    w.emplace_back(p + "self_attn.k_proj.weight", normal({kv, d}, std));
    w.emplace_back(p + "self_attn.v_proj.weight", normal({kv, d}, std));
    w.emplace_back(p + "self_attn.o_proj.weight", normal({d, q}, out_std));
    w.emplace_back(p + "post_attention_layernorm.weight", at::ones({d}, at::kFloat));
    w.emplace_back(p + "mlp.gate_proj.weight", normal({ff, d}, std));
    w.emplace_back(p + "mlp.up_proj.weight", normal({ff, d}, std));
    w.emplace_back(p + "mlp.down_proj.weight", normal({d, ff}, out_std));
    if (c.ttt_mode && c.IsTttLayer(i)) {
      w.emplace_back(p + "mlp.ttt_conv.weight", TttConv(c));
      w.emplace_back(p + "mlp.ttt_proj.weight", TttProj(c));
    }
  }
  w.emplace_back("model.norm.weight", at::ones({d}, at::kFloat));
  if (!c.tie_word_embeddings) w.emplace_back("lm_head.weight", normal({c.vocab_size, d}, std));
  return w;
}

NamedTensors MissingTttWeights(const ModelConfig& c, const NamedTensors& weights) {
  auto has = [&](const std::string& name) {
    return std::any_of(weights.begin(), weights.end(),
                       [&](const auto& nt) { return nt.first == name; });
  };
  NamedTensors out;
  for (int64_t i : c.ttt_layers) {
    const std::string p = absl::StrCat("model.layers.", i, ".mlp.");
    if (!has(p + "ttt_conv.weight")) out.emplace_back(p + "ttt_conv.weight", TttConv(c));
    if (c.ttt_proj && !has(p + "ttt_proj.weight")) {
      out.emplace_back(p + "ttt_proj.weight", TttProj(c));
    }
  }
  return out;
}

absl::Status WriteHfModel(const fs::path& dir, const ModelConfig& config,
                          const NamedTensors& weights, const std::string& dtype,
                          const std::map<std::string, std::string>& metadata) {
  at::ScalarType st;
  if (dtype == "f32") {
    st = at::kFloat;
  } else if (dtype == "bf16") {
    st = at::kBFloat16;
  } else if (dtype == "f16") {
    st = at::kHalf;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("unknown export dtype '", dtype, "'"));
  }
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec)
    return absl::InternalError(absl::StrCat("cannot create ", dir.string(), ": ", ec.message()));
  NamedTensors cast;
  for (const auto& [name, t] : weights) {
    cast.emplace_back(name, t.detach().to(at::kCPU).to(st).contiguous());
  }
  auto meta = metadata;
  meta["format"] = "pt";
  RETURN_IF_ERROR(engine::WriteSafetensors(dir / "model.safetensors", cast, meta));
  return util::WriteFileAtomically(dir / "config.json", engine::ModelConfigToJson(config) + "\n");
}

absl::Status CopyTokenizer(const fs::path& from, const fs::path& to) {
  std::error_code ec;
  fs::create_directories(to, ec);
  std::vector<fs::path> files;
  if (fs::is_regular_file(from)) {
    files.push_back(from);
  } else {
    for (const char* name : {"tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                             "special_tokens_map.json"}) {
      if (fs::exists(from / name)) files.push_back(from / name);
    }
  }
  if (files.empty()) {
    return absl::NotFoundError(absl::StrCat("no tokenizer files in ", from.string()));
  }
  for (const auto& f : files) {
    if (fs::exists(to / f.filename()) && fs::equivalent(f, to / f.filename())) continue;
    std::ifstream in(f, std::ios::binary);
    std::stringstream bytes;
    bytes << in.rdbuf();
    RETURN_IF_ERROR(util::WriteFileAtomically(to / f.filename(), bytes.str()));
  }
  return absl::OkStatus();
}

std::string FormatDuration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  char buf[32];
  if (s >= 3600) {
    std::snprintf(buf, sizeof buf, "%lldh%02lldm%02llds", (long long)(s / 3600),
                  (long long)(s / 60 % 60), (long long)(s % 60));
  } else {
    std::snprintf(buf, sizeof buf, "%lldm%02llds", (long long)(s / 60), (long long)(s % 60));
  }
  return buf;
}

}  // namespace ttt::train
