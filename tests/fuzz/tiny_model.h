// A real Model small enough that its saved states make seed inputs of a few kilobytes: 2 layers
// (TTT on layer 1), d_model 8, d_ff 12, vocab 16, a 6-token attention window, chunk 4. Weights
// are fixed pseudo-random numbers, the same in every process, so the seeds in
// corpus/checkpoint_fuzzer/ (written by make_checkpoint_seeds) restore on it.
#pragma once

#include <memory>

#include "engine/internal/model_tensors.h"

namespace ttt::fuzz {

std::unique_ptr<engine::Model> TinyModel();

}  // namespace ttt::fuzz
