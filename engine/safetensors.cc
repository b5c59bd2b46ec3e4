// Reading (mmap, then the header checked by internal/safetensors_header), encoding and writing
// (util::WriteFileAtomically) of safetensors files, and the WeightStore over a Hugging Face
// checkpoint folder (one file or an index of shards). Every check happens in Parse() before any
// tensor is handed out, so a truncated or hostile file yields a status naming the file and the
// tensor, never a crash or an out-of-bounds read.
#include "engine/internal/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <string_view>
#include <system_error>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/internal/safetensors_header.h"
#include "util/files.h"
#include "util/status_macros.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "safetensors data is little-endian; Load() copies raw bytes");

namespace ttt::engine {
namespace {

using Json = nlohmann::json;

constexpr uint64_t kHeaderLengthBytes = 8;
constexpr char kSingleFile[] = "model.safetensors";
constexpr char kIndexFile[] = "model.safetensors.index.json";

uint64_t ReadLe64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

void AppendLe64(uint64_t v, std::string* out) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// SafetensorsFile

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(
    const std::filesystem::path& path) {
  const std::string name = path.string();
  const int fd = ::open(name.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) return absl::NotFoundError(absl::StrCat("no such file: ", name));
    return absl::ErrnoToStatus(err, absl::StrCat("opening ", name));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return absl::ErrnoToStatus(err, absl::StrCat("stat ", name));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(name, ": not a regular file"));
  }
  auto file = std::unique_ptr<SafetensorsFile>(new SafetensorsFile());
  file->source_ = name;
  file->size_ = static_cast<uint64_t>(st.st_size);
  // mmap of zero bytes fails; Parse() reports short files with the proper message.
  if (file->size_ >= kHeaderLengthBytes) {
    void* m = ::mmap(nullptr, file->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      return absl::ErrnoToStatus(err, absl::StrCat("mmap ", name));
    }
    file->mapping_ = m;
    file->base_ = static_cast<const uint8_t*>(m);
  }
  ::close(fd);  // the mapping keeps the file alive
  RETURN_IF_ERROR(file->Parse(kSafetensorsMaxHeaderBytes));
  return file;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::FromBytes(
    std::string bytes, const std::string& source, uint64_t max_header_bytes) {
  auto file = std::unique_ptr<SafetensorsFile>(new SafetensorsFile());
  file->source_ = source;
  file->owned_ = std::move(bytes);
  // Taken after the move: the object is never moved again, so the pointer stays valid.
  file->base_ = reinterpret_cast<const uint8_t*>(file->owned_.data());
  file->size_ = file->owned_.size();
  RETURN_IF_ERROR(file->Parse(max_header_bytes));
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_ != nullptr) ::munmap(mapping_, size_);
}

absl::Status SafetensorsFile::Parse(uint64_t max_header_bytes) {
  auto invalid = [this](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": ", what));
  };
  if (size_ < kHeaderLengthBytes) {
    return invalid(absl::StrCat("file is ", size_,
                                " bytes, shorter than the 8-byte header length; truncated?"));
  }
  const uint64_t header_len = ReadLe64(base_);
  if (header_len > size_ - kHeaderLengthBytes) {
    return invalid(absl::StrCat("header length ", header_len, " runs past the end of the file (",
                                size_, " bytes); truncated or not a safetensors file"));
  }
  // Before any JSON is read: parsing costs memory in proportion to the header.
  if (header_len > max_header_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(source_, ": header length ", header_len,
                                                     " exceeds the limit of ", max_header_bytes,
                                                     " bytes"));
  }
  data_offset_ = kHeaderLengthBytes + header_len;
  const std::string_view header(reinterpret_cast<const char*>(base_ + kHeaderLengthBytes),
                                header_len);
  absl::StatusOr<internal::SafetensorsHeader> parsed =
      internal::ParseSafetensorsHeader(header, size_ - data_offset_);
  if (!parsed.ok()) return invalid(parsed.status().message());
  entries_ = std::move(parsed->entries);
  metadata_ = std::move(parsed->metadata);
  index_.clear();
  for (size_t i = 0; i < entries_.size(); ++i) index_[entries_[i].name] = i;
  return absl::OkStatus();
}

bool SafetensorsFile::Contains(const std::string& name) const { return index_.count(name) > 0; }

absl::StatusOr<at::Tensor> SafetensorsFile::Load(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) {
    return absl::NotFoundError(absl::StrCat("tensor '", name, "' not found in ", source_));
  }
  const TensorEntry& e = entries_[it->second];
  try {
    at::Tensor t = at::empty(e.shape, at::TensorOptions().dtype(e.dtype));
    if (e.end > e.begin) std::memcpy(t.data_ptr(), base_ + data_offset_ + e.begin, e.end - e.begin);
    return t;
  } catch (const std::exception& ex) {  // c10::Error or std::bad_alloc
    return absl::ResourceExhaustedError(
        absl::StrCat("allocating tensor '", name, "' from ", source_, ": ", ex.what()));
  }
}

// ---------------------------------------------------------------------------------------------
// WeightStore

absl::StatusOr<std::unique_ptr<WeightStore>> WeightStore::Open(const std::filesystem::path& dir) {
  auto store = std::unique_ptr<WeightStore>(new WeightStore());
  store->dir_ = dir;
  const std::string dir_name = dir.string();
  std::error_code ec;

  // Like transformers: the single file wins when both are present.
  if (std::filesystem::exists(dir / kSingleFile, ec)) {
    ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(dir / kSingleFile));
    for (const TensorEntry& e : file->entries()) store->owner_[e.name] = 0;
    store->files_.push_back(std::move(file));
    return store;
  }
  const std::filesystem::path index_path = dir / kIndexFile;
  if (!std::filesystem::exists(index_path, ec)) {
    return absl::NotFoundError(
        absl::StrCat("no ", kSingleFile, " or ", kIndexFile, " in ", dir_name));
  }
  const std::string index_name = index_path.string();
  auto invalid = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(index_name, ": ", what));
  };
  std::ifstream in(index_path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  if (!in || !text) return absl::ErrnoToStatus(errno, absl::StrCat("reading ", index_name));
  const Json index = Json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (index.is_discarded()) return invalid("not valid JSON");
  if (!index.is_object()) return invalid("expected a JSON object");
  auto map_it = index.find("weight_map");
  if (map_it == index.end() || !map_it->is_object()) {
    return invalid("needs a \"weight_map\" object of tensor name -> shard file");
  }
  if (map_it->empty()) return invalid("\"weight_map\" lists no tensors");

  std::map<std::string, size_t> shard_index;  // shard file name -> index into files_
  for (auto it = map_it->begin(); it != map_it->end(); ++it) {
    const std::string& tensor = it.key();
    if (!it.value().is_string()) {
      return invalid(absl::StrCat("shard of tensor '", tensor, "' must be a file name"));
    }
    const std::string shard = it.value().get<std::string>();
    const std::filesystem::path rel(shard);
    // Shards live in the checkpoint folder; an index must not reach outside it.
    const bool escapes =
        shard.empty() || rel.is_absolute() ||
        std::any_of(rel.begin(), rel.end(), [](const auto& p) { return p == ".."; });
    if (escapes) {
      return invalid(absl::StrCat("tensor '", tensor, "' names shard \"", shard,
                                  "\", which is not a file inside ", dir_name));
    }
    auto [sit, inserted] = shard_index.emplace(shard, store->files_.size());
    if (inserted) {
      auto file = SafetensorsFile::Open(dir / rel);
      if (!file.ok()) {
        if (absl::IsNotFound(file.status())) {
          return absl::NotFoundError(absl::StrCat(index_name, ": shard \"", shard,
                                                  "\" (holding tensor '", tensor,
                                                  "') is missing from ", dir_name));
        }
        return file.status();
      }
      store->files_.push_back(*std::move(file));
    }
    if (!store->files_[sit->second]->Contains(tensor)) {
      return invalid(absl::StrCat("tensor '", tensor, "' is mapped to shard \"", shard,
                                  "\", which does not contain it"));
    }
    store->owner_[tensor] = sit->second;
  }
  return store;
}

bool WeightStore::Contains(const std::string& name) const { return owner_.count(name) > 0; }

absl::StatusOr<at::Tensor> WeightStore::Load(const std::string& name) const {
  auto it = owner_.find(name);
  if (it == owner_.end()) {
    return absl::NotFoundError(absl::StrCat("tensor '", name, "' missing from ", dir_.string()));
  }
  return files_[it->second]->Load(name);
}

std::vector<std::string> WeightStore::Names() const {
  std::vector<std::string> names;
  names.reserve(owner_.size());
  for (const auto& [name, unused] : owner_) names.push_back(name);
  return names;
}

// ---------------------------------------------------------------------------------------------
// Encoding and writing

absl::StatusOr<std::string> EncodeSafetensors(const NamedTensors& tensors,
                                              const std::map<std::string, std::string>& metadata) {
  try {
    // The reference writer puts metadata first, then tensors; we keep the caller's order.
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    if (!metadata.empty()) header[internal::kMetadataKey] = metadata;
    std::vector<at::Tensor> data;
    data.reserve(tensors.size());
    std::set<std::string> seen;
    uint64_t offset = 0;
    for (const auto& named : tensors) {
      // Not a structured binding: C++17 lambdas cannot capture one (Clang refuses).
      const std::string& name = named.first;
      const at::Tensor& tensor = named.second;
      auto bad = [&](const std::string& what) {
        return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "': ", what));
      };
      if (name == internal::kMetadataKey) return bad("the name is reserved for metadata");
      if (!seen.insert(name).second) return bad("name given twice");
      if (!tensor.defined()) return bad("undefined tensor");
      if (tensor.layout() != at::kStrided) return bad("only dense tensors can be written");
      const internal::DtypeInfo* dtype = internal::DtypeByType(tensor.scalar_type());
      if (dtype == nullptr) {
        return bad(absl::StrCat("dtype ", c10::toString(tensor.scalar_type()),
                                " cannot be written (F32, F16, BF16, I64, I32, U8, F64)"));
      }
      at::Tensor cpu = tensor.detach().to(at::kCPU).contiguous();
      const uint64_t nbytes = static_cast<uint64_t>(cpu.numel()) * dtype->size;
      nlohmann::ordered_json entry;
      entry["dtype"] = dtype->name;
      entry["shape"] = cpu.sizes().vec();
      entry["data_offsets"] = {offset, offset + nbytes};
      header[name] = std::move(entry);
      offset += nbytes;
      data.push_back(std::move(cpu));
    }
    // Names and metadata must be UTF-8 (JSON); strict dumping throws otherwise.
    std::string json = header.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::strict);
    // Pad with spaces so the data section starts 8-byte aligned, as the reference writer does.
    json.append((8 - json.size() % 8) % 8, ' ');

    std::string out;
    out.reserve(kHeaderLengthBytes + json.size() + offset);
    AppendLe64(json.size(), &out);
    out += json;
    for (const at::Tensor& t : data) {
      out.append(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size());
    }
    return out;
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor names and metadata must be valid UTF-8: ", e.what()));
  } catch (const std::exception& e) {  // c10::Error copying off a device, std::bad_alloc
    return absl::InternalError(absl::StrCat("encoding safetensors: ", e.what()));
  }
}

absl::Status WriteSafetensors(const std::filesystem::path& path, const NamedTensors& tensors,
                              const std::map<std::string, std::string>& metadata) {
  ASSIGN_OR_RETURN(std::string bytes, EncodeSafetensors(tensors, metadata));
  return util::WriteFileAtomically(path, bytes);
}

}  // namespace ttt::engine
