#include "engine/internal/state_buffer.h"

#include <algorithm>
#include <vector>

namespace ttt::engine::internal {

bool OwnsBuffer(const at::Tensor& view) {
  return view.defined() && view.use_count() == 1 && view.storage().use_count() == 1;
}

namespace {

// Rows of spare room after `view`'s end along `dim` inside its own buffer (0 when it does not own
// one or its layout is not rows of a larger contiguous buffer).
int64_t SpareRows(const at::Tensor& view, int64_t dim) {
  if (!OwnsBuffer(view) || view.dim() != dim + 2 || view.stride(dim + 1) != 1) return 0;
  const int64_t width = view.size(dim + 1), n = view.size(dim);
  if (view.stride(dim) != width || width == 0) return 0;
  const int64_t offset = view.storage_offset();
  const int64_t elements = static_cast<int64_t>(view.storage().nbytes() / view.element_size());
  if (dim == 0) return std::max<int64_t>(0, (elements - offset) / width - n);
  // dim == 1: blocks of `cap` rows, one per leading index, the view starting `begin` rows in.
  const int64_t block = view.stride(0);
  if (block % width != 0) return 0;
  const int64_t cap = block / width, begin = (offset % block) / width;
  const int64_t room_in_block = cap - begin - n;
  // The last block must also end inside the storage.
  const int64_t last_block_end = offset + (view.size(0) - 1) * block + (cap - begin) * width;
  return last_block_end <= elements ? std::max<int64_t>(0, room_in_block) : 0;
}

// A fresh buffer with `reserve` rows along `dim`, holding `view`'s rows at its start; returns the
// view of those rows.
at::Tensor MoveToBuffer(const at::Tensor& view, int64_t dim, int64_t reserve) {
  std::vector<int64_t> sizes = view.sizes().vec();
  const int64_t n = sizes[dim];
  sizes[dim] = std::max(reserve, n);
  at::Tensor buffer = at::empty(sizes, view.options());
  at::Tensor rows = buffer.narrow(dim, 0, n);
  if (n > 0) rows.copy_(view);
  return rows;
}

// Points `view` at `sizes` rows from `offset` of its storage (strides unchanged): in place when
// no other handle shares its TensorImpl, so a decode step's growing caches dispatch no operation.
void Reframe(at::Tensor& view, at::IntArrayRef sizes, int64_t offset) {
  const std::vector<int64_t> strides = view.strides().vec();
  if (view.use_count() == 1 && view.unsafeGetTensorImpl()->allow_tensor_metadata_change()) {
    view.unsafeGetTensorImpl()->set_sizes_and_strides(sizes, strides, offset);
  } else {
    view = view.as_strided(sizes, strides, offset);
  }
}

}  // namespace

void GrowRows(at::Tensor& view, int64_t dim, int64_t m, int64_t reserve) {
  const int64_t n = view.size(dim);
  if (m == 0) return;
  if (SpareRows(view, dim) < m) view = MoveToBuffer(view, dim, std::max(reserve, n + m));
  std::vector<int64_t> sizes = view.sizes().vec();
  sizes[dim] = n + m;
  Reframe(view, sizes, view.storage_offset());
}

void AppendRows(at::Tensor& view, const at::Tensor& rows, int64_t dim, int64_t reserve) {
  const int64_t m = rows.size(dim), n = view.size(dim);
  if (m == 0) return;
  GrowRows(view, dim, m, reserve);
  view.narrow(dim, n, m).copy_(rows);
}

void KeepLastRows(at::Tensor& view, int64_t dim, int64_t keep, int64_t reserve) {
  const int64_t n = view.size(dim);
  keep = std::min(keep, n);  // callers pass "everything" as a huge count
  if (keep < n) {
    std::vector<int64_t> sizes = view.sizes().vec();
    sizes[dim] = keep;
    Reframe(view, sizes, view.storage_offset() + (n - keep) * view.stride(dim));
  }
  if (keep == 0) {
    view = at::empty(view.sizes(), view.options());  // nothing to keep: let the buffer go
    return;
  }
  const int64_t row_bytes = view.numel() == 0 ? 0 : view.nbytes() / view.size(dim);
  if (row_bytes > 0 && BufferBytes(view) > 2 * std::max(reserve, keep) * row_bytes) {
    view = MoveToBuffer(view, dim, reserve);
  }
}

void ClearRows(at::Tensor& view, int64_t dim) {
  std::vector<int64_t> sizes = view.sizes().vec();
  sizes[dim] = 0;
  if (OwnsBuffer(view) && dim == 0 && view.dim() == 2 && view.stride(1) == 1 &&
      view.stride(0) == view.size(1)) {
    Reframe(view, sizes, 0);
  } else {
    view = at::empty(sizes, view.options());
  }
}

int64_t BufferBytes(const at::Tensor& view) {
  return view.defined() ? static_cast<int64_t>(view.storage().nbytes()) : 0;
}

void ShareCachePrefix(LayerCache& cache) {
  if (cache.shared_keys.defined() || cache.keys.size(1) == 0 || OwnsBuffer(cache.keys)) return;
  std::vector<int64_t> empty = cache.keys.sizes().vec();
  empty[1] = 0;
  cache.shared_keys = std::move(cache.keys);
  cache.shared_values = std::move(cache.values);
  cache.keys = at::empty(empty, cache.shared_keys.options());
  cache.values = at::empty(empty, cache.shared_values.options());
}

void KeepLastCacheRows(LayerCache& cache, int64_t keep, int64_t reserve) {
  const int64_t shared = cache.SharedRows(), own = cache.keys.size(1);
  keep = std::min(keep, shared + own);       // callers pass "everything" as a huge count
  const int64_t drop = shared + own - keep;  // oldest first: the prefix's
  if (shared > 0 && drop >= shared) {
    cache.shared_keys = at::Tensor();
    cache.shared_values = at::Tensor();
  } else if (shared > 0 && drop > 0) {
    cache.shared_keys = cache.shared_keys.slice(1, drop);
    cache.shared_values = cache.shared_values.slice(1, drop);
  }
  KeepLastRows(cache.keys, 1, std::min(keep, own), reserve);
  KeepLastRows(cache.values, 1, std::min(keep, own), reserve);
}

at::Tensor WholeCache(const at::Tensor& shared, const at::Tensor& own) {
  if (!shared.defined() || shared.size(1) == 0) return own;
  return at::cat({shared, own}, 1);
}

}  // namespace ttt::engine::internal
