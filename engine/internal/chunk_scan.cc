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

bool CpuFloats(const at::Tensor& t) {
  return t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous();
}

// The inner products a block's recursion needs, per chunk, in double.
struct InnerProducts {
  std::vector<double> with_delta;  // <D, U_i> = sum(V_i * (Z_i D^T))
  std::vector<double> gram;        // <U_i, U_k> = sum((V_i V_k^T) * (Z_i Z_k^T)), [chunks, chunks]
};

// From `zd` [m, d_model] (Z D^T), the targets `vb` [m, d_model] and the Grams gz, gv [m, m] of a
// block of m / chunk chunks: loops over the floats on the CPU (no operation to dispatch), tensor
// operations elsewhere.
InnerProducts BlockInnerProducts(const at::Tensor& zd, const at::Tensor& vb, const at::Tensor& gz,
                                 const at::Tensor& gv, int64_t chunk) {
  const int64_t m = vb.size(0), d = vb.size(1), chunks = m / chunk;
  if (!(CpuFloats(zd) && CpuFloats(vb) && CpuFloats(gz) && CpuFloats(gv))) {
    const auto dbl = [](const at::Tensor& t) { return t.to(at::kDouble); };
    return {
        DoubleValues((dbl(vb) * dbl(zd)).sum(1).view({chunks, chunk}).sum(1)),
        DoubleValues(
            (dbl(gv) * dbl(gz)).view({chunks, chunk, chunks, chunk}).sum(at::IntArrayRef{1, 3}))};
  }
  InnerProducts out{std::vector<double>(chunks, 0.0), std::vector<double>(chunks * chunks, 0.0)};
  const float *z = zd.data_ptr<float>(), *v = vb.data_ptr<float>();
  const float *g_z = gz.data_ptr<float>(), *g_v = gv.data_ptr<float>();
  for (int64_t a = 0; a < m; ++a) {
    double dot = 0;
    for (int64_t c = 0; c < d; ++c) dot += static_cast<double>(v[a * d + c]) * z[a * d + c];
    out.with_delta[a / chunk] += dot;
    double* gram_row = out.gram.data() + (a / chunk) * chunks;
    for (int64_t b = 0; b < m; ++b) {
      gram_row[b / chunk] += static_cast<double>(g_v[a * m + b]) * g_z[a * m + b];
    }
  }
  return out;
}

// A float tensor [rows, cols] on `device`, filled on the host with value(r, c).
template <typename Value>
at::Tensor HostFilled(int64_t rows, int64_t cols, const at::Device& device, Value value) {
  at::Tensor t = at::empty({rows, cols}, at::kFloat);
  float* p = t.data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) p[r * cols + c] = static_cast<float>(value(r, c));
  }
  return t.to(device);
}

// One block: `zb` [rows, d_ff] whose first m = chunks * chunk rows are whole chunks with targets
// `vb` [m, d_model]; rows past them (the segment's unfinished chunk, last block only) read the
// delta after every fold. Returns zb @ (delta in force)^T per row and folds the chunks into
// `delta` (in place when `in_place`).
at::Tensor ScanBlock(at::Tensor& delta, const at::Tensor& zb, const at::Tensor& vb, int64_t chunk,
                     const FoldParams& params, bool in_place) {
  const int64_t rows = zb.size(0), m = vb.size(0), chunks = m / chunk;
  const at::Tensor zu = zb.slice(0, 0, m);
  at::Tensor term = at::mm(zb, delta.t());  // [rows, d_model]: every row against D
  at::Tensor gz = at::mm(zb, zu.t());       // [rows, m]
  // Without a clip or a cap every coefficient is eta: no norm to take.
  const bool limited = params.clip > 0 || params.cap > 0;
  const InnerProducts products =
      limited ? BlockInnerProducts(term.slice(0, 0, m), vb, gz.slice(0, 0, m), at::mm(vb, vb.t()),
                                   chunk)
              : InnerProducts{std::vector<double>(chunks, 0.0),
                              std::vector<double>(chunks * chunks, 0.0)};
  double delta_sq = 0;
  if (params.cap > 0) {
    const double norm = delta.norm().item<double>();
    delta_sq = norm * norm;
  }
  const BlockCoefficients c = Recurse(delta_sq, products.with_delta, products.gram, chunks, params);

  // Row r of chunk j (j = chunks past the whole chunks) weighs Gram column a of chunk i by
  // weights[j][i] (zero for i >= j) and its D term by alpha[j].
  const auto chunk_of = [&](int64_t r) { return std::min(r / chunk, chunks); };
  const at::Device device = zb.device();
  if (c.alpha[chunk_of(rows - 1)] != 1.0) {  // the cap shrank D (alpha never grows)
    term.mul_(
        HostFilled(rows, 1, device, [&](int64_t r, int64_t) { return c.alpha[chunk_of(r)]; }));
  }
  term.addmm_(gz.mul_(HostFilled(rows, m, device,
                                 [&](int64_t r, int64_t a) {
                                   return c.weights[chunk_of(r) * chunks + a / chunk];
                                 })),
              vb);

  // D <- alpha * D + sum_i w_i V_i^T Z_i, one product over the block's rows.
  const at::Tensor weighted =
      vb.mul(HostFilled(m, 1, device,
                        [&](int64_t a, int64_t) { return c.weights[chunks * chunks + a / chunk]; }))
          .t();
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
  if (complete == 0) return at::mm(z.slice(0, pending), FloatDelta(delta).t());
  if (delta.scalar_type() == at::kBFloat16) {  // the segment in fp32, rounded once at its end
    at::Tensor work = delta.to(at::kFloat);
    at::Tensor term = DenseSegmentTerms(work, z, targets, pending, chunk, params,
                                        /*in_place=*/true, block_rows);
    if (in_place) {
      delta.copy_(work);
    } else {
      delta = work.to(at::kBFloat16);
    }
    return term;
  }
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
