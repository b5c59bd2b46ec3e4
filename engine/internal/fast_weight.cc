#include "engine/internal/fast_weight.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "engine/internal/state_buffer.h"

namespace ttt::engine::internal {
namespace {

int64_t IncrementRows(const DeltaIncrements& inc) { return inc.empty() ? 0 : inc.v.size(0); }

// Rows of one increment (the TTT chunk: every increment is one whole chunk).
int64_t RowsPerIncrement(const DeltaIncrements& inc) {
  return IncrementRows(inc) / static_cast<int64_t>(inc.scales.size());
}

// Each increment row's coefficient, [k * chunk] f32 on the increments' device.
at::Tensor RowScales(const DeltaIncrements& inc) {
  std::vector<float> scales(inc.scales.begin(), inc.scales.end());
  at::Tensor per_increment = at::tensor(scales, at::kFloat).to(inc.v.device());
  return per_increment.repeat_interleave(RowsPerIncrement(inc));
}

double Sum(const at::Tensor& t) { return t.sum().item<double>(); }

}  // namespace

at::Tensor FloatDelta(const at::Tensor& delta) {
  return delta.scalar_type() == at::kFloat ? delta : delta.to(at::kFloat);
}

std::atomic<bool> fork_increments{true};  // engine::SetForkIncrements

bool FoldsFactored(const TttLayerState& slot, int64_t new_rows) {
  if (!fork_increments.load(std::memory_order_relaxed) && slot.increments.empty()) return false;
  if (slot.increments.empty() && (new_rows == 0 || OwnsBuffer(slot.delta))) return false;
  const int64_t d_model = slot.delta.size(0), d_ff = slot.delta.size(1);
  return (IncrementRows(slot.increments) + new_rows) * (d_model + d_ff) < d_model * d_ff;
}

int64_t MaxIncrementRows(int64_t d_model, int64_t d_ff, int64_t chunk) {
  if (chunk <= 0 || d_model <= 0 || d_ff <= 0) return 0;
  const int64_t rows = (d_model * d_ff - 1) / (d_model + d_ff);  // rows * (d + d_ff) < d * d_ff
  return rows / chunk * chunk;
}

at::Tensor EffectiveDelta(const TttLayerState& slot) {
  const DeltaIncrements& inc = slot.increments;
  // A bf16 delta (an idle state's copy, engine/compact.h, or a model's ttt_delta_dtype) reads as
  // the fp32 values it stands for.
  if (inc.empty()) return FloatDelta(slot.delta);
  // base_scale * B + (V scaled by row)^T Z, in a tensor of its own.
  return at::addmm(FloatDelta(slot.delta) * inc.base_scale,
                   (inc.v * RowScales(inc).unsqueeze(1)).t(), inc.z);
}

double EffectiveDeltaNorm(const TttLayerState& slot) {
  if (slot.increments.empty()) return EffectiveDelta(slot).norm().item<double>();
  return std::sqrt(std::max(slot.increments.norm_sq, 0.0));
}

void MaterialiseDelta(TttLayerState& slot) {
  if (slot.increments.empty()) return;
  slot.delta = EffectiveDelta(slot);
  slot.increments = DeltaIncrements{};
}

void FoldIncrement(TttLayerState& slot, const at::Tensor& v, const at::Tensor& z,
                   const FoldParams& params) {
  DeltaIncrements& inc = slot.increments;
  const at::Tensor base = FloatDelta(slot.delta);
  if (inc.empty()) {
    const double base_norm = base.norm().item<double>();
    inc.norm_sq = base_norm * base_norm;
    inc.base_scale = 1;
  }
  // The update U = v^T z is never formed: its norm and its inner products with the base and the
  // earlier increments come from the factors.
  const double self = Sum(at::mm(v, v.t()) * at::mm(z, z.t()));  // ||U||^2
  const double with_base = Sum(at::mm(v, base) * z);             // <B, U>
  double with_increments = 0;                                    // <sum c_i U_i, U>
  if (!inc.empty()) {
    const int64_t k = static_cast<int64_t>(inc.scales.size());
    at::Tensor cross = (at::mm(v, inc.v.t()) * at::mm(z, inc.z.t())).sum(0);  // [k * chunk]
    at::Tensor per_increment = cross.view({k, -1}).sum(1).to(at::kDouble).cpu().contiguous();
    const double* dots = per_increment.data_ptr<double>();
    for (int64_t i = 0; i < k; ++i) with_increments += inc.scales[i] * dots[i];
  }
  const double clip =
      params.clip > 0 ? std::min(1.0, params.clip / (std::sqrt(self) + 1e-12)) : 1.0;
  const double scale = params.eta * clip;
  const double dot = inc.base_scale * with_base + with_increments;  // <D, U>
  double norm_sq = inc.norm_sq + 2 * scale * dot + scale * scale * self;

  if (inc.empty()) {
    inc.v = v.clone(at::MemoryFormat::Contiguous);  // the caller's rows may be reused
    inc.z = z.clone(at::MemoryFormat::Contiguous);
  } else {
    // Appends in place only into buffers this state owns: a fork's shared rows stay as they are.
    const int64_t rows = inc.v.size(0) + v.size(0);
    AppendRows(inc.v, v, 0, rows);
    AppendRows(inc.z, z, 0, rows);
  }
  inc.scales.push_back(scale);
  if (params.cap > 0) {
    const double factor = std::min(1.0, params.cap / (std::sqrt(std::max(norm_sq, 0.0)) + 1e-12));
    inc.base_scale *= factor;
    for (double& s : inc.scales) s *= factor;
    norm_sq *= factor * factor;
  }
  inc.norm_sq = norm_sq;
}

void ScaleDelta(TttLayerState& slot, double factor) {
  DeltaIncrements& inc = slot.increments;
  if (!inc.empty()) {  // the factors carry it: the shared base and rows stay as they are
    inc.base_scale *= factor;
    for (double& s : inc.scales) s *= factor;
    inc.norm_sq *= factor * factor;
  } else if (OwnsBuffer(slot.delta)) {
    slot.delta.mul_(factor);
  } else {
    slot.delta = slot.delta * factor;
  }
}

void StoreDelta(TttLayerState& slot, const at::Tensor& value, at::ScalarType dtype) {
  if (slot.delta.scalar_type() == dtype && OwnsBuffer(slot.delta)) {
    slot.delta.copy_(value);
  } else {
    slot.delta = value.to(dtype, /*non_blocking=*/false, /*copy=*/true);
  }
}

void AddIncrementTerms(const TttLayerState& slot, const at::Tensor& z, at::Tensor out) {
  const DeltaIncrements& inc = slot.increments;
  if (inc.empty() || z.size(0) == 0) return;
  if (inc.base_scale != 1) out.mul_(inc.base_scale);
  out.addmm_(at::mm(z, inc.z.t()) * RowScales(inc), inc.v);
}

at::Tensor FactoredSegmentTerms(TttLayerState& slot, const at::Tensor& z, const at::Tensor& targets,
                                int64_t pending, int64_t chunk, const FoldParams& params) {
  DeltaIncrements& inc = slot.increments;
  const int64_t rows = z.size(0), complete = targets.size(0);
  // The coefficients in force for each chunk of the segment: before any fold, then after each.
  std::vector<double> base_scales{inc.base_scale};
  std::vector<std::vector<double>> scales{inc.scales};
  for (int64_t g = 0; g < complete; ++g) {
    FoldIncrement(slot, targets[g], z.slice(0, g * chunk, (g + 1) * chunk), params);
    base_scales.push_back(inc.base_scale);
    scales.push_back(inc.scales);
  }
  const int64_t k = static_cast<int64_t>(inc.scales.size());
  std::vector<float> base_table(base_scales.begin(), base_scales.end());
  std::vector<float> table((complete + 1) * k, 0.0f);  // [chunk of the segment, increment]
  for (int64_t g = 0; g <= complete; ++g) {
    std::copy(scales[g].begin(), scales[g].end(), table.begin() + g * k);
  }
  const at::Device device = z.device();
  std::vector<int64_t> chunks_of_rows;
  for (int64_t r = pending; r < rows; ++r) chunks_of_rows.push_back(r / chunk);
  const at::Tensor chunk_of_row = at::tensor(chunks_of_rows, at::kLong).to(device);
  const at::Tensor z_new = z.slice(0, pending);
  at::Tensor term =
      at::mm(z_new, FloatDelta(slot.delta).t()) *
      at::tensor(base_table, at::kFloat).to(device).index_select(0, chunk_of_row).unsqueeze(1);
  if (k == 0) return term;
  const at::Tensor row_coefficients = at::tensor(table, at::kFloat)
                                          .view({complete + 1, k})
                                          .to(device)
                                          .index_select(0, chunk_of_row)
                                          .repeat_interleave(chunk, 1);  // [n, k * chunk]
  return term.addmm_(at::mm(z_new, inc.z.t()) * row_coefficients, inc.v);
}

}  // namespace ttt::engine::internal

namespace ttt::engine {
void SetForkIncrements(bool on) { internal::fork_increments.store(on, std::memory_order_relaxed); }
}  // namespace ttt::engine
