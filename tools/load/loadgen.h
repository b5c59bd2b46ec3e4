// `ttt loadgen` (tools/load/loadgen.cc): N concurrent sessions ingesting and generating against a
// live server, with a baseline of the same sessions fewer at a time; prints throughput, latency
// percentiles and their ratios (bench/RESULTS.md). Its flags are the CLI's (cli/flags.h).
#pragma once

namespace ttt::cli {

// argv[0] is "loadgen"; argv[1] the session count N (1..1024). Returns 0 on success, 1 when a
// call failed, 2 on bad arguments (cli::Usage).
int RunLoadgen(int argc, char** argv);

}  // namespace ttt::cli
