// `ttt stress`: N concurrent clients drive a real ttt-serve with a random mix of every RPC for a
// bounded time and check, as they go, what must hold whatever the load (issue 9, "The proof"):
// - the server never dies and never answers INTERNAL or UNKNOWN;
// - a session no writer touches scores the same all run long, within the float tolerance of
//   docs/contract.md across batch compositions (kScoreTolerance; each client keeps a "canary"
//   that the others read, fork, export and checkpoint, but never write);
// - every acknowledged checkpoint restores to a session that scores the same as the session at
//   checkpoint time; forks, imports of exports and restores over a session too;
//   a reset session scores as a fresh one;
// - the server's RSS (from /proc/<--server_pid>/status) is flat after warm-up: the slope of a
//   least-squares line through the samples after --warmup_s is reported, and is a violation
//   above --max_rss_slope_mib_per_min when that is set.
// Prints operations/s, calls and errors by RPC and code, RSS samples; --report_json writes them.
// Speaks only the public API (tttserve_proto, gRPC, Abseil).
#pragma once

namespace ttt::cli {

// argv[0] is the command's name (ignored); then --flag=value (or --flag value) arguments:
//   --target=HOST:PORT (default localhost:50051)  --clients=N (4)  --duration_s=S (120)
//   --seed=N (1)  --report_json=PATH  --server_pid=PID  --warmup_s=S (duration/3)
//   --max_rss_slope_mib_per_min=X (0: report only)  --tenant=NAME (stress)
//   --call_timeout_s=S (60)  --quiet
//   --tls  --ca_file=PATH  --cert_file=PATH --key_file=PATH  --token=TOKEN (or TTT_TOKEN), as
//   the other subcommands take them
// Flags are parsed here, not with absl flags, so that `ttt` can link this next to its own
// (--seed means different things there). Returns 0 when every invariant held, 1 on a
// violation, 2 on bad flags or when the server cannot be reached at the start.
int RunStress(int argc, char** argv);

}  // namespace ttt::cli
