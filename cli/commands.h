// The ttt subcommands (see client.h for the Handler contract), grouped by file.
#pragma once

namespace ttt::cli {

// server.cc
int RunHealth(int argc, char** argv);
int RunInfo(int argc, char** argv);
// sessions.cc
int RunCreate(int argc, char** argv);
int RunGet(int argc, char** argv);
int RunList(int argc, char** argv);
int RunDelete(int argc, char** argv);
int RunReset(int argc, char** argv);
int RunFork(int argc, char** argv);
// ingest.cc
int RunIngest(int argc, char** argv);
// inference.cc
int RunGenerate(int argc, char** argv);
int RunScore(int argc, char** argv);
// checkpoints.cc
int RunCheckpoint(int argc, char** argv);
int RunCheckpoints(int argc, char** argv);
int RunDeleteCheckpoint(int argc, char** argv);
int RunRestore(int argc, char** argv);
int RunExport(int argc, char** argv);
int RunImport(int argc, char** argv);
// The load tools (`loadgen`, `stress`) are in tools/load/.

}  // namespace ttt::cli
