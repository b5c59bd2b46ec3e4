#include "engine/internal/workspace.h"

namespace ttt::engine::internal {

Workspace& Workspace::ForThisThread() {
  thread_local Workspace workspace;
  return workspace;
}

at::Tensor Workspace::Tensor(Slot slot, at::IntArrayRef sizes) {
  const int64_t elements = c10::multiply_integers(sizes);
  if (elements > kMaxSlotFloats) return at::empty(sizes, at::TensorOptions().dtype(at::kFloat));
  std::vector<float>& buffer = buffers_[static_cast<size_t>(slot)];
  if (static_cast<int64_t>(buffer.size()) < elements) buffer.resize(elements);
  at::Tensor& view = views_[static_cast<size_t>(slot)];
  if (!view.defined() || view.data_ptr() != buffer.data() || view.sizes() != sizes) {
    view = FloatView(buffer.data(), sizes);
  }
  return view;
}

at::Tensor FloatView(float* data, at::IntArrayRef sizes) {
  return at::from_blob(data, sizes, at::TensorOptions().dtype(at::kFloat));
}

at::Tensor FloatView(const at::Tensor& owner, float* data, at::IntArrayRef sizes) {
  return at::from_blob(
      data, sizes, [owner](void*) {}, at::TensorOptions().dtype(at::kFloat));
}

}  // namespace ttt::engine::internal
