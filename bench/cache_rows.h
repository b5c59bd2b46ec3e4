// engine_bench --only=cache (issue 27 #4): what the cache of adapted states
// (session/internal/state_cache.h) saves a session that reads a document another session read
// from the same starting state: the whole Ingest through the session manager, computed (the
// first reader, which also populates the cache), adopted (a later reader), and computed without
// the cache (what the first reader pays for populating it). Built only with the session library
// (not in an engine-only build).
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "engine/model.h"

namespace ttt::bench {

// One row per call: median seconds over `rounds` fresh documents of `tokens` tokens (a multiple
// of the model's chunk, so the adopted state is the whole document's), on `now`'s clock, and
// their ratios.
void CacheTable(const std::string& label, const engine::Model& model, int64_t tokens, int rounds,
                const std::function<double()>& now);

// Prints the table's header.
void CacheTableHeader();

}  // namespace ttt::bench
