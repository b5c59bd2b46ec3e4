// engine/internal/batched_kernels: the varlen attention of a step's short items, the batched
// fast-weight product and the short step's dense product against their LibTorch tensor forms,
// at the head widths with a register kernel (32, 64, 128) and one without (24), with grouped
// queries, windows, a fork's shared prefix and several sequences in one call; a dense product's
// row independent of the call's other rows and of the thread count.
#include "engine/internal/batched_kernels.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include <ATen/Parallel.h>

#include <cmath>
#include <limits>
#include <utility>
#include <vector>

namespace ttt::engine::internal {
namespace {

double MaxDiff(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).abs().max().item<double>();
}

// Causal (and windowed) attention of one sequence's new rows q [n, heads, hd] over all its keys
// [kv_heads, total, hd], the last n of which are the new ones.
at::Tensor AttentionTensors(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                            int64_t window) {
  const int64_t n = q.size(0), heads = q.size(1), hd = q.size(2), total = keys.size(1);
  const int64_t group = heads / keys.size(0);
  const at::Tensor k = keys.repeat_interleave(group, 0), v = values.repeat_interleave(group, 0);
  at::Tensor scores = at::matmul(q.transpose(0, 1), k.transpose(1, 2)) / std::sqrt(double(hd));
  const at::Tensor query_pos = at::arange(total - n, total).unsqueeze(1);
  const at::Tensor key_pos = at::arange(total).unsqueeze(0);
  at::Tensor visible = key_pos <= query_pos;
  if (window > 0) visible = visible & (key_pos > query_pos - window);
  scores = scores.masked_fill(visible.logical_not(), -std::numeric_limits<double>::infinity());
  return at::matmul(at::softmax(scores, -1), v).transpose(0, 1).reshape({n, heads * hd});
}

struct Seq {
  int64_t cached, rows, shared;  // cache rows before the call (`shared` of them a fork's prefix)
};

void CheckVarlen(int64_t heads, int64_t kv_heads, int64_t hd, int64_t window,
                 const std::vector<Seq>& seqs) {
  int64_t rows = 0;
  for (const Seq& s : seqs) rows += s.rows;
  const at::Tensor q = at::randn({rows, heads, hd}) * 2;
  const at::Tensor k_new = at::randn({rows, kv_heads, hd}), v_new = at::randn({rows, kv_heads, hd});
  std::vector<at::Tensor> keys(seqs.size()), values(seqs.size()), shared_keys(seqs.size()),
      shared_values(seqs.size()), full_keys(seqs.size()), full_values(seqs.size());
  std::vector<AttentionSeq> args;
  int64_t row0 = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const Seq& s = seqs[i];
    full_keys[i] = at::randn({kv_heads, s.cached + s.rows, hd}) * 2;
    full_values[i] = at::randn({kv_heads, s.cached + s.rows, hd});
    const at::Tensor new_rows = at::arange(s.cached, s.cached + s.rows);
    full_keys[i].index_copy_(1, new_rows, k_new.slice(0, row0, row0 + s.rows).transpose(0, 1));
    full_values[i].index_copy_(1, new_rows, v_new.slice(0, row0, row0 + s.rows).transpose(0, 1));
    // The call's cache: its own rows (the new ones left as garbage for the call to fill) after a
    // separate shared prefix.
    keys[i] = full_keys[i].slice(1, s.shared).clone();
    values[i] = full_values[i].slice(1, s.shared).clone();
    keys[i].slice(1, s.cached - s.shared).fill_(NAN);
    values[i].slice(1, s.cached - s.shared).fill_(NAN);
    shared_keys[i] = full_keys[i].slice(1, 0, s.shared).contiguous();
    shared_values[i] = full_values[i].slice(1, 0, s.shared).contiguous();
    args.push_back({row0, s.rows, &keys[i], &values[i], s.shared > 0 ? &shared_keys[i] : nullptr,
                    s.shared > 0 ? &shared_values[i] : nullptr});
    row0 += s.rows;
  }
  at::Tensor out = at::zeros({rows, heads * hd});
  VarlenAttention(q, k_new, v_new, args, kv_heads, window, out);
  row0 = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const at::Tensor expected = AttentionTensors(q.slice(0, row0, row0 + seqs[i].rows),
                                                 full_keys[i], full_values[i], window);
    EXPECT_LT(MaxDiff(out.slice(0, row0, row0 + seqs[i].rows), expected), 2e-5)
        << "hd " << hd << " window " << window << " sequence " << i;
    EXPECT_TRUE(at::equal(keys[i], full_keys[i].slice(1, seqs[i].shared))) << "sequence " << i;
    EXPECT_TRUE(at::equal(values[i], full_values[i].slice(1, seqs[i].shared)));
    row0 += seqs[i].rows;
  }
}

TEST(BatchedKernelsTest, VarlenAttentionMatchesTheTensorForm) {
  c10::InferenceMode inference;
  at::manual_seed(5);
  // Decode rows, short pieces, spans that are and are not multiples of eight keys, a prefix.
  const std::vector<Seq> seqs = {{0, 1, 0}, {7, 1, 0}, {40, 3, 0}, {16, 9, 5}, {63, 2, 63}};
  for (int64_t hd : {32, 64, 128, 24}) {
    for (int64_t window : {0, 5, 64}) {
      CheckVarlen(/*heads=*/6, /*kv_heads=*/2, hd, window, seqs);
      CheckVarlen(/*heads=*/2, /*kv_heads=*/2, hd, window, seqs);
    }
  }
}

// Scores far apart: the softmax's exponent reaches the bottom of float's range without NaN or a
// lost row (the largest score still dominates).
TEST(BatchedKernelsTest, VarlenAttentionKeepsExtremeScoresFinite) {
  c10::InferenceMode inference;
  at::manual_seed(6);
  const int64_t hd = 64;
  const at::Tensor q = at::full({1, 1, hd}, 30.0f);
  at::Tensor keys = at::randn({1, 20, hd}), values = at::randn({1, 20, hd});
  keys[0][3].fill_(10.0f);  // score 30 * 10 * 64 / 8 = 2400 against the others' ~±100
  const at::Tensor k_new = keys.slice(1, 19).transpose(0, 1).contiguous();
  const at::Tensor v_new = values.slice(1, 19).transpose(0, 1).contiguous();
  at::Tensor cache_k = keys.clone(), cache_v = values.clone();
  const AttentionSeq seq{0, 1, &cache_k, &cache_v, nullptr, nullptr};
  at::Tensor out = at::zeros({1, hd});
  VarlenAttention(q, k_new, v_new, {seq}, 1, 0, out);
  EXPECT_TRUE(out.isfinite().all().item<bool>());
  EXPECT_LT(MaxDiff(out[0], values[0][3]), 1e-6);
  // A NaN query gives NaN, as the tensor form does (not a finite row that hides it).
  VarlenAttention(at::full({1, 1, hd}, NAN), k_new, v_new, {seq}, 1, 0, out);
  EXPECT_TRUE(out.isnan().all().item<bool>());
}

// A row's attention is the same float for float whatever else the call holds: alone, after
// another sequence's rows, or as one row of a longer piece (the kernel's part of "bit-identical
// for a given split and batch", docs/contract.md; the dense products' rounding is the BLAS's).
TEST(BatchedKernelsTest, VarlenAttentionRowDoesNotDependOnTheBatch) {
  c10::InferenceMode inference;
  at::manual_seed(9);
  const int64_t heads = 2, kv = 2, hd = 64, cached = 40;
  const at::Tensor keys = at::randn({kv, cached + 3, hd}), values = at::randn({kv, cached + 3, hd});
  const at::Tensor q = at::randn({3, heads, hd});
  const at::Tensor k_new = keys.slice(1, cached).transpose(0, 1).contiguous();
  const at::Tensor v_new = values.slice(1, cached).transpose(0, 1).contiguous();
  auto attend = [&](const at::Tensor& all_q, const at::Tensor& all_k, const at::Tensor& all_v,
                    std::vector<std::pair<at::Tensor, at::Tensor>> caches, int64_t rows_of_last) {
    std::vector<AttentionSeq> seqs;
    int64_t row0 = 0;
    for (size_t i = 0; i < caches.size(); ++i) {
      const int64_t rows = i + 1 == caches.size() ? rows_of_last : 2;
      seqs.push_back({row0, rows, &caches[i].first, &caches[i].second, nullptr, nullptr});
      row0 += rows;
    }
    at::Tensor out = at::zeros({row0, heads * hd});
    VarlenAttention(all_q, all_k, all_v, seqs, kv, 64, out);
    return out.slice(0, row0 - rows_of_last);
  };
  const at::Tensor piece =
      attend(q, k_new, v_new, {{keys.clone(), values.clone()}}, /*rows_of_last=*/3);
  const at::Tensor first_row =
      attend(q.slice(0, 0, 1).contiguous(), k_new.slice(0, 0, 1).contiguous(),
             v_new.slice(0, 0, 1).contiguous(),
             {{keys.slice(1, 0, cached + 1).clone(), values.slice(1, 0, cached + 1).clone()}}, 1);
  EXPECT_TRUE(at::equal(piece[0], first_row[0]));
  const at::Tensor other = at::randn({kv, 10, hd});
  const at::Tensor after_another =
      attend(at::cat({at::randn({2, heads, hd}), q}), at::cat({at::randn({2, kv, hd}), k_new}),
             at::cat({at::randn({2, kv, hd}), v_new}),
             {{other.clone(), other.clone()}, {keys.clone(), values.clone()}}, 3);
  EXPECT_TRUE(at::equal(piece, after_another));
}

TEST(BatchedKernelsTest, BatchedDeltaProductMatchesMatmul) {
  c10::InferenceMode inference;
  at::manual_seed(7);
  const int64_t d_model = 70, d_ff = 100;  // neither a multiple of a block nor of eight lanes
  const at::Tensor z = at::randn({6, d_ff});
  for (at::ScalarType type : {at::kFloat, at::kBFloat16}) {
    const std::vector<at::Tensor> deltas = {at::randn({d_model, d_ff}).to(type),
                                            at::randn({d_model, d_ff}).to(type)};
    std::vector<DeltaSeq> seqs = {{0, 1, &deltas[0]}, {2, 3, &deltas[1]}};
    at::Tensor out = at::full({6, d_model}, 7.0f);
    BatchedDeltaProduct(z, seqs, out);
    for (const DeltaSeq& s : seqs) {
      const at::Tensor expected =
          at::mm(z.slice(0, s.row0, s.row0 + s.rows), s.delta->to(at::kFloat).t());
      EXPECT_LT(MaxDiff(out.slice(0, s.row0, s.row0 + s.rows), expected), 1e-4);
    }
    EXPECT_TRUE(at::equal(out[1], at::full({d_model}, 7.0f)));  // rows of no sequence untouched
    EXPECT_TRUE(at::equal(out[5], at::full({d_model}, 7.0f)));
  }
}

// SmallRowProduct(x, w, bias) as at::linear computes it.
at::Tensor DenseProduct(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias) {
  at::Tensor out = at::empty({x.size(0), w.size(0)});
  SmallRowProduct(x.data_ptr<float>(), x.size(0), x.size(1), w.data_ptr<float>(), w.size(0),
                  bias.defined() ? bias.data_ptr<float>() : nullptr, out.data_ptr<float>());
  return out;
}

TEST(BatchedKernelsTest, SmallRowProductMatchesLinear) {
  c10::InferenceMode inference;
  at::manual_seed(11);
  // A model's widths, and widths that are no multiple of the tile (3) nor of eight lanes.
  for (auto [k, n] : std::vector<std::pair<int64_t, int64_t>>{
           {768, 2048}, {2048, 768}, {13, 7}, {24, 10}, {5, 2}}) {
    for (int64_t rows : {1, 2, 3, 4, 5, 16, 17}) {
      const at::Tensor x = at::randn({rows, k}), w = at::randn({n, k}), bias = at::randn({n});
      const double scale = std::sqrt(double(k));  // each output sums k unit-variance products
      EXPECT_LT(MaxDiff(DenseProduct(x, w, {}), at::linear(x, w)), 1e-5 * scale)
          << "k " << k << " n " << n << " rows " << rows;
      EXPECT_LT(MaxDiff(DenseProduct(x, w, bias), at::linear(x, w, bias)), 1e-5 * scale)
          << "with a bias: k " << k << " n " << n << " rows " << rows;
    }
  }
}

// A decode row gives the same bits alone, among 16 or 64 rows (as concurrent sessions batch it)
// and with one or two threads splitting the weight rows.
TEST(BatchedKernelsTest, SmallRowProductRowDoesNotDependOnTheBatchOrThreads) {
  c10::InferenceMode inference;
  at::manual_seed(12);
  const int64_t k = 780, n = 1003;  // a tail of k past the lanes, of n past the tiles and units
  const at::Tensor x = at::randn({64, k}), w = at::randn({n, k}), bias = at::randn({n});
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  const at::Tensor alone = DenseProduct(x.slice(0, 5, 6), w, bias);
  const at::Tensor among16 = DenseProduct(x.slice(0, 0, 16), w, bias);
  at::set_num_threads(2);
  const at::Tensor among64 = DenseProduct(x, w, bias);
  at::set_num_threads(threads);
  EXPECT_TRUE(at::equal(alone[0], among16[5]));
  EXPECT_TRUE(at::equal(among16, among64.slice(0, 0, 16)));
}

}  // namespace
}  // namespace ttt::engine::internal
