// The safetensors format (https://github.com/huggingface/safetensors): an 8-byte little-endian
// header length, a JSON header naming each tensor's dtype, shape and byte range, then the data.
// Reading memory-maps the file and validates everything before handing out a tensor.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>  // not <torch/torch.h>: a third of the compile time

#include "absl/status/statusor.h"

namespace ttt::engine {

// The largest JSON header read by default: the reference implementation's limit. Checked on the
// 8-byte length alone, before any JSON is parsed.
inline constexpr uint64_t kSafetensorsMaxHeaderBytes = 100 * 1000 * 1000;
// The deepest nesting of arrays and objects a header may have, checked by a scan of the bytes
// before parsing. A valid header needs 3 (object, tensor entry, shape); the reference reader's
// JSON library (serde_json) stops at 128. Deeper input could only be hostile.
inline constexpr int kSafetensorsMaxHeaderDepth = 64;

struct TensorEntry {
  std::string name;
  at::ScalarType dtype;  // one of F32, F16, BF16, I64, I32, U8, F64
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets relative to the start of the data section
  uint64_t end = 0;
};

// One memory-mapped safetensors file. Thread-compatible; tensors it returns are copies
// (they outlive the file).
class SafetensorsFile {
 public:
  // Opens and validates `path`: header length inside the file and within the limit, nesting at
  // most kSafetensorsMaxHeaderDepth, well-formed JSON, known dtypes, offsets inside the data
  // section and not overlapping, byte counts matching shapes. Errors name the file and the
  // tensor, quoting at most a short prefix of any name or value read from the file:
  // NOT_FOUND (no file), INVALID_ARGUMENT (malformed), RESOURCE_EXHAUSTED (header over the limit).
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::filesystem::path& path);
  // Same validation over bytes already in memory (an imported checkpoint); `source` names them.
  // `max_header_bytes` lets a caller hold untrusted input to less than the default.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> FromBytes(
      std::string bytes, const std::string& source,
      uint64_t max_header_bytes = kSafetensorsMaxHeaderBytes);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::vector<TensorEntry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool Contains(const std::string& name) const;
  // A CPU tensor holding a copy of `name`'s data, in its stored dtype. NOT_FOUND names it.
  absl::StatusOr<at::Tensor> Load(const std::string& name) const;
  const std::string& source() const { return source_; }

 private:
  SafetensorsFile() = default;
  absl::Status Parse(uint64_t max_header_bytes);

  std::string source_;
  const uint8_t* base_ = nullptr;  // start of the whole file (mapped or owned)
  uint64_t size_ = 0;
  uint64_t data_offset_ = 0;  // where the data section begins
  void* mapping_ = nullptr;   // mmap'd region, or null when bytes are owned
  std::string owned_;         // the bytes for FromBytes
  std::vector<TensorEntry> entries_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// A model's weights: `model.safetensors`, or the shards a `model.safetensors.index.json` lists.
class WeightStore {
 public:
  // NOT_FOUND when neither file is in `dir`; INVALID_ARGUMENT for a malformed index or shard.
  static absl::StatusOr<std::unique_ptr<WeightStore>> Open(const std::filesystem::path& dir);
  bool Contains(const std::string& name) const;
  // NOT_FOUND ("tensor 'x' missing from <dir>") when absent.
  absl::StatusOr<at::Tensor> Load(const std::string& name) const;
  std::vector<std::string> Names() const;

 private:
  std::filesystem::path dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> owner_;  // tensor name -> index into files_
};

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// The safetensors encoding of `tensors` (any device; written contiguous, in their dtypes) with
// string `metadata` under "__metadata__". Names must be unique (INVALID_ARGUMENT otherwise).
absl::StatusOr<std::string> EncodeSafetensors(
    const NamedTensors& tensors, const std::map<std::string, std::string>& metadata = {});
// Writes the encoding atomically (util::WriteFileAtomically): a temporary file beside `path`,
// fsync, rename, fsync the folder.
absl::Status WriteSafetensors(const std::filesystem::path& path, const NamedTensors& tensors,
                              const std::map<std::string, std::string>& metadata = {});

}  // namespace ttt::engine
