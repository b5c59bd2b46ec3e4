// libFuzzer target: the checkpoint reader, Model::RestoreSequence over SafetensorsFile::FromBytes
// (what ImportSession and a restore run on a client's or the disk's bytes), on a real tiny model.
// A state it accepts must be usable: one more token ingests without a crash (an error status is
// allowed; issue 9 #8 tracks which ones should have been refused at import).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/internal/model_tensors.h"
#include "engine/internal/safetensors.h"
#include "engine/model.h"
#include "tests/fuzz/fuzz_check.h"
#include "tests/fuzz/tiny_model.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const ttt::engine::Model* const model = ttt::fuzz::TinyModel().release();
  auto file = ttt::engine::SafetensorsFile::FromBytes(
      std::string(reinterpret_cast<const char*>(data), size), "fuzz.ckpt");
  if (!file.ok()) return 0;
  auto state = RestoreSequence(*model, **file);
  if (!state.ok()) {
    // NOT_FOUND: a state tensor is missing (model_test's RestoreRejectsAStateFromAnotherModel).
    const absl::StatusCode code = state.status().code();
    FUZZ_CHECK(code == absl::StatusCode::kInvalidArgument || code == absl::StatusCode::kNotFound,
               "unexpected status %s", state.status().ToString().c_str());
    return 0;
  }
  ttt::engine::IngestItem item{&*state, {static_cast<int32_t>(size % 16)}};
  auto logprobs = model->Ingest(absl::MakeSpan(&item, 1));
  if (logprobs.ok()) FUZZ_CHECK(logprobs->size() == 1, "%zu results", logprobs->size());
  return 0;
}
