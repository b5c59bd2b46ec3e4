#include "train/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "util/files.h"
#include "util/status_macros.h"

namespace ttt::train {

namespace fs = std::filesystem;

std::string ProgressToJson(const Progress& p) {
  nlohmann::json j;
  j["step"] = p.step;
  j["tokens"] = p.tokens;
  j["elapsed_s"] = p.elapsed_s;
  j["best_val"] = p.best_val;
  return j.dump(2) + "\n";
}

absl::StatusOr<Progress> ProgressFromJson(const std::string& text, const std::string& source) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not a JSON object"));
  }
  Progress p;
  auto get = [&](const char* key, auto& out) -> absl::Status {
    auto it = j.find(key);
    if (it == j.end() || !it->is_number()) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": \"", key, "\" is missing or not a number"));
    }
    it->get_to(out);
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(get("step", p.step));
  RETURN_IF_ERROR(get("tokens", p.tokens));
  RETURN_IF_ERROR(get("elapsed_s", p.elapsed_s));
  RETURN_IF_ERROR(get("best_val", p.best_val));
  return p;
}

absl::StatusOr<std::string> ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path.string()));
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::InternalError(absl::StrCat("reading ", path.string(), " failed"));
  return ss.str();
}

absl::Status SyncDir(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) {
    return absl::InternalError(absl::StrCat("opening ", dir.string(), ": ", std::strerror(errno)));
  }
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) {
    return absl::InternalError(absl::StrCat("fsync ", dir.string(), ": ", std::strerror(err)));
  }
  return absl::OkStatus();
}

absl::Status SaveCheckpoint(const fs::path& work, const engine::ModelConfig& config,
                            const engine::Model& model, torch::optim::Optimizer& opt,
                            const Progress& progress) {
  const fs::path tmp = work / "ckpt.tmp", cur = work / "ckpt", old = work / "ckpt.old";
  std::error_code ec;
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec) return absl::InternalError(absl::StrCat("creating ", tmp.string(), ": ", ec.message()));
  engine::NamedTensors weights;
  for (const auto& [name, t] : NamedWeights(model)) weights.emplace_back(name, t.detach());
  RETURN_IF_ERROR(engine::WriteSafetensors(tmp / "weights.safetensors", weights));
  try {
    torch::save(opt, (tmp / "optimizer.pt").string());
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("saving optimizer state: ", e.what_without_backtrace()));
  }
  RETURN_IF_ERROR(
      util::WriteFileAtomically(tmp / "config.json", engine::ModelConfigToJson(config) + "\n"));
  RETURN_IF_ERROR(util::WriteFileAtomically(tmp / "progress.json", ProgressToJson(progress)));
  RETURN_IF_ERROR(SyncDir(tmp));
  fs::remove_all(old, ec);
  if (fs::exists(cur)) fs::rename(cur, old, ec);
  if (ec) return absl::InternalError(absl::StrCat("rotating checkpoint: ", ec.message()));
  fs::rename(tmp, cur, ec);
  if (ec) return absl::InternalError(absl::StrCat("installing checkpoint: ", ec.message()));
  RETURN_IF_ERROR(SyncDir(work));
  fs::remove_all(old, ec);
  return absl::OkStatus();
}

fs::path FindCheckpoint(const fs::path& work) {
  for (const char* name : {"ckpt", "ckpt.old"}) {
    const fs::path p = work / name;
    if (fs::exists(p / "progress.json") && fs::exists(p / "optimizer.pt")) return p;
  }
  return {};
}

absl::StatusOr<Checkpoint> LoadCheckpoint(const fs::path& dir) {
  Checkpoint c;
  ASSIGN_OR_RETURN(std::string config_text, ReadFile(dir / "config.json"));
  ASSIGN_OR_RETURN(c.config, engine::ParseModelConfig(config_text, (dir / "config.json").string()));
  ASSIGN_OR_RETURN(auto file, engine::SafetensorsFile::Open(dir / "weights.safetensors"));
  for (const auto& e : file->entries()) {
    ASSIGN_OR_RETURN(at::Tensor t, file->Load(e.name));
    c.weights.emplace_back(e.name, t.to(at::kFloat));
  }
  ASSIGN_OR_RETURN(std::string progress_text, ReadFile(dir / "progress.json"));
  ASSIGN_OR_RETURN(c.progress, ProgressFromJson(progress_text, (dir / "progress.json").string()));
  return c;
}

absl::Status LoadOptimizer(const fs::path& dir, torch::optim::Optimizer& opt) {
  try {
    torch::load(opt, (dir / "optimizer.pt").string());
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(absl::StrCat("loading optimizer state from ", dir.string(),
                                                   ": ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

}  // namespace ttt::train
