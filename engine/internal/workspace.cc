#include "engine/internal/workspace.h"

namespace ttt::engine::internal {

Workspace& Workspace::ForThisThread() {
  thread_local Workspace workspace;
  return workspace;
}

float* Workspace::Floats(Slot slot, int64_t elements) {
  std::vector<float>& buffer = buffers_[static_cast<size_t>(slot)];
  if (static_cast<int64_t>(buffer.size()) < elements) buffer.resize(elements);
  return buffer.data();
}

at::Tensor Workspace::Tensor(Slot slot, at::IntArrayRef sizes) {
  return FloatView(Floats(slot, c10::multiply_integers(sizes)), sizes);
}

at::Tensor FloatView(float* data, at::IntArrayRef sizes) {
  return at::from_blob(data, sizes, at::TensorOptions().dtype(at::kFloat));
}

}  // namespace ttt::engine::internal
