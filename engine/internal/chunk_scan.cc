#include "engine/internal/chunk_scan.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace ttt::engine::internal {
namespace {

// The factor (<= 1) that brings a norm back to `limit` when it is longer (limit 0: off), as
// at::clamp_max(limit / (norm + 1e-12), 1.0) in forward.cc's clip and cap.
double ShrinkFactor(double norm, double limit) {
  return limit > 0 ? std::min(1.0, limit / (norm + 1e-12)) : 1.0;
}

// The deltas in force in one block of `chunks` chunks: the one for chunk j (j = 0 .. chunks, the
// last one after every fold) is alpha[j] * D + sum_{i<j} weights[j * chunks + i] * U_i.
struct BlockCoefficients {
  std::vector<double> alpha;
  std::vector<double> weights;  // zero from column j on in row j
};

// The clip and cap recursion over scalars: `delta_sq` = |D|^2, `with_delta`[i] = <D, U_i>,
// `gram`[i * chunks + k] = <U_i, U_k>.
BlockCoefficients Recurse(double delta_sq, const std::vector<double>& with_delta,
                          const std::vector<double>& gram, int64_t chunks,
                          const FoldParams& params) {
  BlockCoefficients out{std::vector<double>(chunks + 1, 1.0),
                        std::vector<double>((chunks + 1) * chunks, 0.0)};
  double alpha = 1;
  std::vector<double> w(chunks, 0.0);
  for (int64_t j = 0; j < chunks; ++j) {
    w[j] = params.eta * ShrinkFactor(std::sqrt(std::max(gram[j * chunks + j], 0.0)), params.clip);
    if (params.cap > 0) {  // |alpha D + sum_i w_i U_i|^2 as a quadratic form
      double squared = alpha * alpha * delta_sq;
      for (int64_t i = 0; i <= j; ++i) {
        squared += 2 * alpha * w[i] * with_delta[i];
        for (int64_t k = 0; k <= j; ++k) squared += w[i] * w[k] * gram[i * chunks + k];
      }
      const double factor = ShrinkFactor(std::sqrt(std::max(squared, 0.0)), params.cap);
      alpha *= factor;
      for (int64_t i = 0; i <= j; ++i) w[i] *= factor;
    }
    out.alpha[j + 1] = alpha;
    std::copy(w.begin(), w.begin() + j + 1, out.weights.begin() + (j + 1) * chunks);
  }
  return out;
}

std::vector<double> DoubleValues(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kDouble).cpu().contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

// A float tensor on `device` from host values.
at::Tensor FloatTensor(const std::vector<float>& values, at::IntArrayRef sizes,
                       const at::Device& device) {
  return at::tensor(values, at::kFloat).view(sizes).to(device);
}

// One block: `zb` [rows, d_ff] whose first m = chunks * chunk rows are whole chunks with targets
// `vb` [m, d_model]; rows past them (the segment's unfinished chunk, last block only) read the
// delta after every fold. Returns zb @ (delta in force)^T per row and folds the chunks into
// `delta` (in place when `in_place`).
at::Tensor ScanBlock(at::Tensor& delta, const at::Tensor& zb, const at::Tensor& vb, int64_t chunk,
                     const FoldParams& params, bool in_place) {
  const int64_t rows = zb.size(0), m = vb.size(0), chunks = m / chunk;
  const at::Tensor zu = zb.slice(0, 0, m);
  at::Tensor term = at::mm(zb, delta.t());   // [rows, d_model]: every row against D
  const at::Tensor gz = at::mm(zb, zu.t());  // [rows, m]
  const at::Tensor gv = at::mm(vb, vb.t());  // [m, m]
  // The inner products per chunk, in double: <D, U_i> = sum(V_i * (Z_i D^T)),
  // <U_i, U_k> = sum((V_i V_k^T) * (Z_i Z_k^T)).
  const std::vector<double> with_delta =
      DoubleValues((vb.to(at::kDouble) * term.slice(0, 0, m).to(at::kDouble))
                       .sum(1)
                       .view({chunks, chunk})
                       .sum(1));
  const std::vector<double> gram =
      DoubleValues((gv.to(at::kDouble) * gz.slice(0, 0, m).to(at::kDouble))
                       .view({chunks, chunk, chunks, chunk})
                       .sum(at::IntArrayRef{1, 3}));
  double delta_sq = 0;
  if (params.cap > 0) {
    const double norm = delta.norm().item<double>();
    delta_sq = norm * norm;
  }
  const BlockCoefficients c = Recurse(delta_sq, with_delta, gram, chunks, params);

  // Row r of chunk j (j = chunks past the whole chunks) weighs Gram column a of chunk i by
  // weights[j][i] (zero for i >= j) and its D term by alpha[j].
  std::vector<float> mask(rows * m), row_alpha(rows), fold_weights(m);
  bool scaled = false;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t j = std::min(r / chunk, chunks);
    row_alpha[r] = static_cast<float>(c.alpha[j]);
    scaled = scaled || c.alpha[j] != 1.0;
    for (int64_t a = 0; a < m; ++a) {
      mask[r * m + a] = static_cast<float>(c.weights[j * chunks + a / chunk]);
    }
  }
  for (int64_t a = 0; a < m; ++a) {
    fold_weights[a] = static_cast<float>(c.weights[chunks * chunks + a / chunk]);
  }
  const at::Device device = zb.device();
  if (scaled) term.mul_(FloatTensor(row_alpha, {rows, 1}, device));
  term.addmm_(gz * FloatTensor(mask, {rows, m}, device), vb);

  // D <- alpha * D + sum_i w_i V_i^T Z_i, one product over the block's rows.
  const at::Tensor weighted = (vb * FloatTensor(fold_weights, {m, 1}, device)).t();
  const double alpha = c.alpha[chunks];
  if (in_place) {
    delta.addmm_(weighted, zu, /*beta=*/alpha, /*alpha=*/1);
  } else {
    delta = at::addmm(delta, weighted, zu, /*beta=*/alpha, /*alpha=*/1);
  }
  return term;
}

}  // namespace

at::Tensor DenseSegmentTerms(at::Tensor& delta, const at::Tensor& z, const at::Tensor& targets,
                             int64_t pending, int64_t chunk, const FoldParams& params,
                             bool in_place, int64_t block_rows) {
  const int64_t rows = z.size(0), complete = targets.size(0);
  if (complete == 0) return at::mm(z.slice(0, pending), delta.t());
  const at::Tensor v = targets.reshape({complete * chunk, targets.size(2)});
  const int64_t per_block = std::max<int64_t>(1, block_rows / chunk);
  std::vector<at::Tensor> terms;
  for (int64_t g0 = 0; g0 < complete; g0 += per_block) {
    const int64_t g1 = std::min(complete, g0 + per_block);
    const int64_t first = g0 * chunk, last = g1 == complete ? rows : g1 * chunk;
    at::Tensor term = ScanBlock(delta, z.slice(0, first, last), v.slice(0, first, g1 * chunk),
                                chunk, params, in_place);
    terms.push_back(g0 == 0 ? term.slice(0, pending) : term);
    in_place = true;  // a fresh delta from the first block is ours
  }
  return terms.size() == 1 ? terms[0] : at::cat(terms, 0);
}

}  // namespace ttt::engine::internal
