// Writes the seed corpus of checkpoint_fuzzer: the tiny model's saved state after 0, 1, 3, 4, 5,
// 9 tokens (empty, inside the first chunk, on a chunk boundary, past the attention window), and
// a fork of the 5-token state that read 4 more (a factored delta: base, increments, coefficients).
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
  auto ingest = [&](ttt::engine::SequenceState& state, int first, int tokens) {
    ttt::engine::IngestItem item{&state, {}};
    for (int i = first; i < first + tokens; ++i) item.tokens.push_back((7 * i + 3) % 16);
    if (tokens == 0) return true;
    auto result = model->Ingest(absl::MakeSpan(&item, 1));
    if (!result.ok()) std::fprintf(stderr, "ingest: %s\n", result.status().ToString().c_str());
    return result.ok();
  };
  auto write = [&](const ttt::engine::SequenceState& state, const std::string& name) {
    auto status = ttt::engine::WriteSafetensors(absl::StrCat(argv[1], "/", name),
                                                StateTensors(state), state.Metadata());
    if (!status.ok()) std::fprintf(stderr, "%s\n", status.ToString().c_str());
    return status.ok();
  };
  for (int tokens : {0, 1, 3, 4, 5, 9}) {
    ttt::engine::SequenceState state = model->NewSequence();
    if (!ingest(state, 0, tokens)) return 1;
    if (!write(state, absl::StrCat("state_", tokens, "_tokens.safetensors"))) return 1;
    if (tokens != 5) continue;
    ttt::engine::SequenceState fork = state.Fork();
    if (!ingest(fork, tokens, 4) || !fork.HoldsIncrements()) return 1;
    if (!write(fork, "state_forked_9_tokens.safetensors")) return 1;
  }
  return 0;
}
