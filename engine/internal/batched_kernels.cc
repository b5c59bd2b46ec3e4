#include "engine/internal/batched_kernels.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace ttt::engine::internal {
namespace {

// Eight floats: GCC/Clang vector extensions, so the loops below vectorise without -ffast-math (a
// plain float reduction may not be reordered by the compiler). The kernels are compiled for the
// x86-64-v4 (AVX-512) and v3 (AVX2, FMA) feature levels and baseline x86-64 and picked at load
// time by the CPU's features (target_clones), as OpenBLAS picks its kernels; the baseline splits
// each vector into two SSE registers. Feature levels, not "arch=haswell" and the like: those
// clones are picked only on that Intel family (__builtin_cpu_is), so every AMD CPU ran the SSE
// baseline. This file is compiled with -ffp-contract=off (engine/CMakeLists.txt): no clone fuses
// a product and a sum into one FMA, so all three give the same bits.
using Vec = float __attribute__((vector_size(32)));
constexpr int64_t kLanes = 8;
// Not under ThreadSanitizer: the clones' ifunc resolvers run during relocation, before TSan's
// runtime is up, and crash the process at start.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_THREAD__)
#define TTT_MULTIVERSION \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define TTT_MULTIVERSION
#endif

// Unaligned loads and stores through memcpy (one vector move each once optimised); by pointer,
// not by value, so no AVX-sized value crosses a function boundary (-Wpsabi).
#define TTT_LOAD(v, p) std::memcpy(&(v), (p), sizeof(Vec))
#define TTT_STORE(p, v) std::memcpy((p), &(v), sizeof(Vec))

// Eight elements of `a` as floats: a bf16 value is the top half of the float with the same bits,
// so widening is exact and a bf16 row reads as the fp32 row it stands for (the same sums, bit for
// bit, in Dot below). The widening interleaves zeros below each value (one unpack per half),
// not a conversion to 32-bit integers and a shift: GCC 12 splits that conversion into 128-bit
// halves, which made the bf16 decode term compute-bound (18 ms of arithmetic for 15 ms of
// reading at 64 sessions of the small bench shape; 10.6 ms this way).
using Bf16Bits = uint16_t __attribute__((vector_size(16)));
using Bf16Pairs = uint16_t __attribute__((vector_size(32)));
__attribute__((always_inline)) inline void LoadLanes(Vec* v, const float* a) { TTT_LOAD(*v, a); }
__attribute__((always_inline)) inline void LoadLanes(Vec* v, const c10::BFloat16* a) {
  Bf16Bits bits;
  std::memcpy(&bits, a, sizeof(bits));
  const Bf16Bits zero = {};
  // Little-endian: each float's low 16 bits are zero, its high 16 bits the bf16 value.
  const Bf16Pairs wide =
      __builtin_shufflevector(zero, bits, 0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
  std::memcpy(v, &wide, sizeof(Vec));
}

// The lanes of `v` summed in one fixed tree, the one SumEach also follows:
// ((0+1)+(2+3))+((4+5)+(6+7)).
__attribute__((always_inline)) inline float LaneSum(const Vec& v) {
  return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
}

// sum_i a[i] * b[i] in fp32; `a` f32 or bf16.
template <typename Element>
__attribute__((always_inline)) inline float Dot(const Element* a, const float* b, int64_t n) {
  Vec s0 = {}, s1 = s0, s2 = s0, s3 = s0, x0, x1, x2, x3, y0, y1, y2, y3;
  int64_t i = 0;
  for (; i + 4 * kLanes <= n; i += 4 * kLanes) {
    LoadLanes(&x0, a + i), TTT_LOAD(y0, b + i);
    LoadLanes(&x1, a + i + kLanes), TTT_LOAD(y1, b + i + kLanes);
    LoadLanes(&x2, a + i + 2 * kLanes), TTT_LOAD(y2, b + i + 2 * kLanes);
    LoadLanes(&x3, a + i + 3 * kLanes), TTT_LOAD(y3, b + i + 3 * kLanes);
    s0 += x0 * y0;
    s1 += x1 * y1;
    s2 += x2 * y2;
    s3 += x3 * y3;
  }
  for (; i + kLanes <= n; i += kLanes) {
    LoadLanes(&x0, a + i), TTT_LOAD(y0, b + i);
    s0 += x0 * y0;
  }
  const Vec s = (s0 + s1) + (s2 + s3);
  float total = LaneSum(s);
  for (; i < n; ++i) total += static_cast<float>(a[i]) * b[i];
  return total;
}

// y += alpha * x
__attribute__((always_inline)) inline void Axpy(float alpha, const float* x, float* y, int64_t n) {
  const Vec a = {alpha, alpha, alpha, alpha, alpha, alpha, alpha, alpha};
  Vec xv, yv;
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    TTT_LOAD(xv, x + i), TTT_LOAD(yv, y + i);
    yv += a * xv;
    TTT_STORE(y + i, yv);
  }
  for (; i < n; ++i) y[i] += alpha * x[i];
}

// One head's cached rows in two segments (LayerCache): rows [0, split) of a shared prefix, then
// the sequence's own rows. Reading through it keeps each row's arithmetic as one buffer's.
struct HeadRows {
  const float* shared = nullptr;
  int64_t shared_stride = 0;
  int64_t split = 0;
  const float* own = nullptr;
  int64_t own_stride = 0;

  const float* Row(int64_t j) const {
    return j < split ? shared + j * shared_stride : own + (j - split) * own_stride;
  }
};

// Eight vectors' lane sums as one vector (`sums`): lane j = the sum of v[j]'s lanes (a
// transpose-add in three rounds of shuffles), so eight dot products pay for one reduction instead
// of eight.
__attribute__((always_inline)) inline void SumEach(const Vec* v, Vec* sums) {
  Vec pair[4], quad[2];
  for (int i = 0; i < 4; ++i) {
    pair[i] = __builtin_shufflevector(v[2 * i], v[2 * i + 1], 0, 8, 2, 10, 4, 12, 6, 14) +
              __builtin_shufflevector(v[2 * i], v[2 * i + 1], 1, 9, 3, 11, 5, 13, 7, 15);
  }
  for (int i = 0; i < 2; ++i) {
    quad[i] = __builtin_shufflevector(pair[2 * i], pair[2 * i + 1], 0, 1, 8, 9, 4, 5, 12, 13) +
              __builtin_shufflevector(pair[2 * i], pair[2 * i + 1], 2, 3, 10, 11, 6, 7, 14, 15);
  }
  *sums = __builtin_shufflevector(quad[0], quad[1], 0, 1, 2, 3, 8, 9, 10, 11) +
          __builtin_shufflevector(quad[0], quad[1], 4, 5, 6, 7, 12, 13, 14, 15);
}

// e^x lane by lane, in place (Cephes' expf: x = n ln2 + r, a polynomial in r, times 2^n): within
// 1 ulp of glibc's expf on the softmax's [-87, 0] (every float of [-1, 0], steps of 1e-4 below);
// NaN stays NaN; below -87.3 it gives 2^-126, not 0.
using Lanes = int32_t __attribute__((vector_size(32)));
using Bits32 = uint32_t __attribute__((vector_size(32)));
__attribute__((always_inline)) inline void Exp(Vec* value) {
  Vec x = *value;
  const Vec lo = Vec{} + -87.33654f, hi = Vec{} + 88.0f;
  x = x < lo ? lo : x;  // NaN compares false both ways and passes through
  x = x > hi ? hi : x;
  const Vec t = x * 1.44269504088896341f + 0.5f;
  Lanes n = __builtin_convertvector(t, Lanes);  // toward zero,
  n += __builtin_convertvector(n, Vec) > t;     // then down: a true lane is -1
  const Vec fn = __builtin_convertvector(n, Vec);
  const Vec r = (x - fn * 0.693359375f) - fn * -2.12194440e-4f;
  Vec p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const Bits32 scale = reinterpret_cast<Bits32>(n + 127) << 23;  // unsigned: NaN's n shifts too
  Vec two_n;
  std::memcpy(&two_n, &scale, sizeof(two_n));
  *value = p * two_n;
}

// One query row's heads of one key-head group over keys [first, last] of one sequence, any
// head_dim: one reduction per key. scores: scratch.
__attribute__((always_inline)) inline void AttendRowAnyWidth(const float* q, const HeadRows& keys,
                                                             const HeadRows& values, int64_t first,
                                                             int64_t last, int64_t group,
                                                             int64_t hd, std::vector<float>& scores,
                                                             float* out) {
  const int64_t span = last - first + 1;
  scores.resize(group * (span + 1));
  float* inv_sum = scores.data() + group * span;
  const float norm = std::sqrt(static_cast<float>(hd));
  for (int64_t j = first; j <= last; ++j) {
    const float* k = keys.Row(j);
    for (int64_t t = 0; t < group; ++t)
      scores[t * span + j - first] = Dot(q + t * hd, k, hd) / norm;
  }
  for (int64_t t = 0; t < group; ++t) {
    float* s = scores.data() + t * span;
    const float top = *std::max_element(s, s + span);
    float sum = 0;
    for (int64_t j = 0; j < span; ++j) sum += (s[j] = std::exp(s[j] - top));
    inv_sum[t] = 1.0f / sum;
    std::fill(out + t * hd, out + (t + 1) * hd, 0.0f);
  }
  for (int64_t j = first; j <= last; ++j) {
    const float* v = values.Row(j);
    for (int64_t t = 0; t < group; ++t) Axpy(scores[t * span + j - first], v, out + t * hd, hd);
  }
  for (int64_t t = 0; t < group; ++t) {
    for (int64_t c = 0; c < hd; ++c) out[t * hd + c] *= inv_sum[t];
  }
}

// The same for a head_dim of kVecs vectors: eight keys' dot products share one reduction
// (SumEach), the softmax runs eight lanes at a time (Exp), and the output rows stay in registers
// while the values are summed (bench/RESULTS.md: the kernel with one reduction and one std::exp
// per score was a sixth of a 16-session decode step of the small bench shape).
template <int64_t kVecs>
__attribute__((always_inline)) inline void AttendRowOf(const float* q, const HeadRows& keys,
                                                       const HeadRows& values, int64_t first,
                                                       int64_t last, int64_t group,
                                                       std::vector<float>& scores, float* out) {
  constexpr int64_t kWidth = kVecs * kLanes;
  const int64_t span = last - first + 1, padded = (span + kLanes - 1) / kLanes * kLanes;
  scores.resize(group * padded);
  const float norm = std::sqrt(static_cast<float>(kWidth));
  for (int64_t j0 = 0; j0 < padded; j0 += kLanes) {
    const float* k[kLanes];  // past the last key, lanes repeat it; their scores are masked below
    for (int64_t i = 0; i < kLanes; ++i) k[i] = keys.Row(first + std::min(j0 + i, span - 1));
    for (int64_t t = 0; t < group; ++t) {
      const float* qt = q + t * kWidth;
      Vec part[kLanes], x, y;
      for (int64_t i = 0; i < kLanes; ++i) {
        TTT_LOAD(x, qt), TTT_LOAD(y, k[i]);
        part[i] = x * y;
        for (int64_t c = 1; c < kVecs; ++c) {
          TTT_LOAD(x, qt + c * kLanes), TTT_LOAD(y, k[i] + c * kLanes);
          part[i] += x * y;
        }
      }
      Vec s;
      SumEach(part, &s);
      s /= norm;
      TTT_STORE(scores.data() + t * padded + j0, s);
    }
  }
  for (int64_t t = 0; t < group; ++t) {
    float* s = scores.data() + t * padded;
    // Masked lanes: exp gives them ~1e-38, below what a sum that holds e^0 = 1 can register.
    std::fill(s + span, s + padded, -std::numeric_limits<float>::infinity());
    Vec top, v, sum = {};
    TTT_LOAD(top, s);
    for (int64_t j = kLanes; j < padded; j += kLanes) {
      TTT_LOAD(v, s + j);
      top = v > top ? v : top;
    }
    float max = top[0];
    for (int64_t i = 1; i < kLanes; ++i) max = top[i] > max ? top[i] : max;
    const Vec top_all = Vec{} + max;
    for (int64_t j = 0; j < padded; j += kLanes) {
      TTT_LOAD(v, s + j);
      v -= top_all;
      Exp(&v);
      TTT_STORE(s + j, v);
      sum += v;
    }
    const float inv_sum =
        1.0f / (((sum[0] + sum[1]) + (sum[2] + sum[3])) + ((sum[4] + sum[5]) + (sum[6] + sum[7])));
    Vec acc[kVecs] = {};
    for (int64_t j = 0; j < span; ++j) {
      const Vec weight = Vec{} + s[j];
      const float* row = values.Row(first + j);
      for (int64_t c = 0; c < kVecs; ++c) {
        TTT_LOAD(v, row + c * kLanes);
        acc[c] += weight * v;
      }
    }
    for (int64_t c = 0; c < kVecs; ++c) {
      v = acc[c] * inv_sum;
      TTT_STORE(out + t * kWidth + c * kLanes, v);
    }
  }
}

// One query row's heads of one key-head group over keys [first, last] of one sequence.
TTT_MULTIVERSION void AttendRow(const float* q, const HeadRows& keys, const HeadRows& values,
                                int64_t first, int64_t last, int64_t group, int64_t hd,
                                std::vector<float>& scores, float* out) {
  switch (hd) {
    case 32:
      return AttendRowOf<4>(q, keys, values, first, last, group, scores, out);
    case 64:
      return AttendRowOf<8>(q, keys, values, first, last, group, scores, out);
    case 128:
      return AttendRowOf<16>(q, keys, values, first, last, group, scores, out);
    default:
      return AttendRowAnyWidth(q, keys, values, first, last, group, hd, scores, out);
  }
}

// out[r] = delta @ z[r] for output rows [lo, hi) and the given rows r.
template <typename Element>
__attribute__((always_inline)) inline void DeltaRowsOf(const Element* delta, const float* z,
                                                       int64_t row0, int64_t rows, int64_t lo,
                                                       int64_t hi, int64_t d_ff, int64_t d_model,
                                                       float* out) {
  for (int64_t i = lo; i < hi; ++i) {
    for (int64_t r = row0; r < row0 + rows; ++r) {
      out[r * d_model + i] = Dot(delta + i * d_ff, z + r * d_ff, d_ff);
    }
  }
}
TTT_MULTIVERSION void DeltaRows(const float* delta, const float* z, int64_t row0, int64_t rows,
                                int64_t lo, int64_t hi, int64_t d_ff, int64_t d_model, float* out) {
  DeltaRowsOf(delta, z, row0, rows, lo, hi, d_ff, d_model, out);
}
TTT_MULTIVERSION void DeltaRows(const c10::BFloat16* delta, const float* z, int64_t row0,
                                int64_t rows, int64_t lo, int64_t hi, int64_t d_ff, int64_t d_model,
                                float* out) {
  DeltaRowsOf(delta, z, row0, rows, lo, hi, d_ff, d_model, out);
}

// out[b * n + a] = w row a . x row b (+ bias[a]) for kW weight rows and kX rows of x, over all
// of k: kW * kX accumulators of eight lanes, lane l summing k = l, l + 8, ... in order; then the
// lanes' tree (SumEach for a full tile of 8, LaneSum otherwise: the same sums), then the tail of
// k past the last multiple of eight, then the bias. Every tile shape does an output's arithmetic
// the same way, so no output depends on which tile (or call) computed it.
template <int kW, int kX>
__attribute__((always_inline)) inline void ProductTile(const float* w, const float* x, int64_t k,
                                                       int64_t n, const float* bias, float* out) {
  Vec acc[kW * kX] = {}, wv, xv[kX];
  int64_t i = 0;
  for (; i + kLanes <= k; i += kLanes) {
#pragma GCC unroll 8
    for (int b = 0; b < kX; ++b) TTT_LOAD(xv[b], x + b * k + i);
#pragma GCC unroll 8
    for (int a = 0; a < kW; ++a) {
      TTT_LOAD(wv, w + a * k + i);
#pragma GCC unroll 8
      for (int b = 0; b < kX; ++b) acc[a * kX + b] += wv * xv[b];
    }
  }
  float sums[kW * kX];
  if constexpr (kW * kX == kLanes) {
    Vec all;
    SumEach(acc, &all);
    std::memcpy(sums, &all, sizeof(all));
  } else {
    for (int j = 0; j < kW * kX; ++j) sums[j] = LaneSum(acc[j]);
  }
  for (int a = 0; a < kW; ++a) {
    for (int b = 0; b < kX; ++b) {
      float sum = sums[a * kX + b];
      for (int64_t j = i; j < k; ++j) sum += w[a * k + j] * x[b * k + j];
      out[b * n + a] = bias != nullptr ? sum + bias[a] : sum;
    }
  }
}

// kX rows of x against weight rows [lo, hi): tiles of 8 / kX weight rows (8 accumulators: the
// 16 AVX2 registers hold them, the x rows and a weight vector), then the weight rows left over.
template <int kX>
__attribute__((always_inline)) inline void RowsAgainstColumns(const float* x, int64_t k,
                                                              const float* w, int64_t n,
                                                              const float* bias, int64_t lo,
                                                              int64_t hi, float* out) {
  constexpr int kW = kLanes / kX;
  auto bias_at = [&](int64_t c) { return bias != nullptr ? bias + c : nullptr; };
  int64_t c = lo;
  for (; c + kW <= hi; c += kW) ProductTile<kW, kX>(w + c * k, x, k, n, bias_at(c), out + c);
  for (; c < hi; ++c) ProductTile<1, kX>(w + c * k, x, k, n, bias_at(c), out + c);
}

// Weight rows [lo, hi) of SmallRowProduct (a block that fits the L2 cache) against every row of
// x, two rows of x at a time: those stay in L1 while the block's weights stream past them. A
// last single row takes tiles of eight weight rows (eight independent sums: a decode step of
// one session is not held up by the adds' latency).
TTT_MULTIVERSION void ProductColumns(const float* x, int64_t rows, int64_t k, const float* w,
                                     int64_t n, const float* bias, int64_t lo, int64_t hi,
                                     float* out) {
  int64_t r = 0;
  for (; r + 2 <= rows; r += 2)
    RowsAgainstColumns<2>(x + r * k, k, w, n, bias, lo, hi, out + r * n);
  if (r < rows) RowsAgainstColumns<1>(x + r * k, k, w, n, bias, lo, hi, out + r * n);
}

}  // namespace

void SmallRowProduct(const float* x, int64_t rows, int64_t k, const float* w, int64_t n,
                     const float* bias, float* out) {
  // Blocks of weight rows of ~160 KB (a multiple of the tiles' 8 rows): they stay in the L2
  // cache (512 KB and more on current x86 cores) while every row of x passes them, so the
  // weights are read from memory once; and they are the work units threads split.
  constexpr int64_t kBlockBytes = 160 << 10;
  const int64_t block =
      std::max<int64_t>(kLanes, kBlockBytes / (k * int64_t(sizeof(float))) / kLanes * kLanes);
  at::parallel_for(0, (n + block - 1) / block, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      ProductColumns(x, rows, k, w, n, bias, b * block, std::min(n, (b + 1) * block), out);
    }
  });
}

void VarlenAttention(const at::Tensor& q, const at::Tensor& k_new, const at::Tensor& v_new,
                     absl::Span<const AttentionSeq> seqs, int64_t kv_heads, int64_t window,
                     at::Tensor& out) {
  for (const at::Tensor* t : {&q, &k_new, &v_new, const_cast<const at::Tensor*>(&out)}) {
    TORCH_CHECK(t->is_contiguous() && t->scalar_type() == at::kFloat,
                "VarlenAttention: f32 contiguous q, k, v and out");
  }
  const int64_t heads = q.size(1), hd = q.size(2), group = heads / kv_heads;
  const float* qd = q.data_ptr<float>();
  const float* kd = k_new.data_ptr<float>();
  const float* vd = v_new.data_ptr<float>();
  float* od = out.data_ptr<float>();
  const int64_t units = static_cast<int64_t>(seqs.size()) * kv_heads;
  at::parallel_for(0, units, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    for (int64_t u = begin; u < end; ++u) {
      const AttentionSeq& s = seqs[u / kv_heads];
      const int64_t g = u % kv_heads;
      const at::Tensor &keys = *s.keys, &values = *s.values;
      for (const at::Tensor* t : {&keys, &values, s.shared_keys, s.shared_values}) {
        TORCH_CHECK(t == nullptr || (t->stride(2) == 1 && t->scalar_type() == at::kFloat),
                    "VarlenAttention: f32 key/value rows must be contiguous");
      }
      float* k = keys.data_ptr<float>() + g * keys.stride(0);
      float* v = values.data_ptr<float>() + g * values.stride(0);
      const int64_t own_cached = keys.size(1) - s.rows;
      for (int64_t i = 0; i < s.rows; ++i) {  // this key head's rows of the new tokens
        const int64_t src = ((s.row0 + i) * kv_heads + g) * hd;
        std::memcpy(k + (own_cached + i) * keys.stride(1), kd + src, hd * sizeof(float));
        std::memcpy(v + (own_cached + i) * values.stride(1), vd + src, hd * sizeof(float));
      }
      HeadRows key_rows{nullptr, 0, 0, k, keys.stride(1)};
      HeadRows value_rows{nullptr, 0, 0, v, values.stride(1)};
      if (s.shared_keys != nullptr) {
        const at::Tensor &sk = *s.shared_keys, &sv = *s.shared_values;
        key_rows = {sk.data_ptr<float>() + g * sk.stride(0), sk.stride(1), sk.size(1), k,
                    keys.stride(1)};
        value_rows = {sv.data_ptr<float>() + g * sv.stride(0), sv.stride(1), sv.size(1), v,
                      values.stride(1)};
      }
      const int64_t cached = key_rows.split + own_cached;
      for (int64_t i = 0; i < s.rows; ++i) {
        const int64_t last = cached + i;
        const int64_t first = window > 0 ? std::max<int64_t>(0, last - window + 1) : 0;
        const int64_t row = s.row0 + i;
        AttendRow(qd + (row * heads + g * group) * hd, key_rows, value_rows, first, last, group, hd,
                  scores, od + (row * heads + g * group) * hd);
      }
    }
  });
}

void BatchedDeltaProduct(const at::Tensor& z, absl::Span<const DeltaSeq> seqs, at::Tensor& out) {
  TORCH_CHECK(z.is_contiguous() && z.scalar_type() == at::kFloat && out.is_contiguous() &&
                  out.scalar_type() == at::kFloat,
              "BatchedDeltaProduct: f32 contiguous z and out");
  const int64_t d_ff = z.size(1), d_model = out.size(1);
  constexpr int64_t kBlock = 64;  // output rows per work unit
  const int64_t blocks = (d_model + kBlock - 1) / kBlock;
  const float* zd = z.data_ptr<float>();
  float* od = out.data_ptr<float>();
  at::parallel_for(
      0, static_cast<int64_t>(seqs.size()) * blocks, 1, [&](int64_t begin, int64_t end) {
        for (int64_t u = begin; u < end; ++u) {
          const DeltaSeq& s = seqs[u / blocks];
          const at::ScalarType type = s.delta->scalar_type();
          TORCH_CHECK(s.delta->is_contiguous() && (type == at::kFloat || type == at::kBFloat16),
                      "BatchedDeltaProduct: f32 or bf16 contiguous deltas");
          const int64_t lo = (u % blocks) * kBlock, hi = std::min(d_model, lo + kBlock);
          if (type == at::kFloat) {
            DeltaRows(s.delta->data_ptr<float>(), zd, s.row0, s.rows, lo, hi, d_ff, d_model, od);
          } else {
            DeltaRows(s.delta->data_ptr<at::BFloat16>(), zd, s.row0, s.rows, lo, hi, d_ff, d_model,
                      od);
          }
        }
      });
}

}  // namespace ttt::engine::internal
