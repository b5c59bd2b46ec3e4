// Writes the seed corpus of checkpoint_fuzzer: the tiny model's saved state after 0, 1, 3, 4, 5,
// 9 tokens (empty, inside the first chunk, on a chunk boundary, past the attention window).
//   make_checkpoint_seeds <dir>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/internal/model_tensors.h"
#include "engine/internal/safetensors.h"
#include "engine/model.h"
#include "tests/fuzz/tiny_model.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <dir>\n", argv[0]);
    return 2;
  }
  auto model = ttt::fuzz::TinyModel();
  for (int tokens : {0, 1, 3, 4, 5, 9}) {
    ttt::engine::SequenceState state = model->NewSequence();
    ttt::engine::IngestItem item{&state, {}};
    for (int i = 0; i < tokens; ++i) item.tokens.push_back((7 * i + 3) % 16);
    if (tokens > 0) {
      auto result = model->Ingest(absl::MakeSpan(&item, 1));
      if (!result.ok()) {
        std::fprintf(stderr, "ingest: %s\n", result.status().ToString().c_str());
        return 1;
      }
    }
    const std::string path = absl::StrCat(argv[1], "/state_", tokens, "_tokens.safetensors");
    auto status = ttt::engine::WriteSafetensors(path, StateTensors(state), state.Metadata());
    if (!status.ok()) {
      std::fprintf(stderr, "%s\n", status.ToString().c_str());
      return 1;
    }
  }
  return 0;
}
