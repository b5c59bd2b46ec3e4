// ttt: the command-line client of ttt-serve: one subcommand per RPC, plus `health` (exit 0 when
// SERVING: the container health check), and the load tools of tools/load: `loadgen` (N
// concurrent sessions ingesting and generating) and `stress`. Speaks only the public API
// (tttserve_proto + gRPC): no engine, no LibTorch.
// `main` parses the flags and dispatches through the table below.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/usage.h"
#include "cli/client.h"
#include "cli/commands.h"
#include "tools/load/loadgen.h"
#include "tools/load/stress.h"
#include "util/command_line.h"

namespace ttt::cli {
namespace {

struct Command {
  const char* name;
  const char* usage;  // arguments and flags, after the name
  Handler run;
};

// One row per subcommand. A new one (e.g. `stress`, tools/load/stress.h's RunStress) is one more
// row.
constexpr Command kCommands[] = {
    {"info", "(server and model information)", RunInfo},
    {"health", "[--service=NAME]   (exit 0 when SERVING)", RunHealth},
    {"create",
     "[--id=ID] [--labels=k=v] [--reset_at_document_end | --fade_at_document_end=F] "
     "[--idle_ttl_s=N]",
     RunCreate},
    {"get", "ID", RunGet},
    {"list", "[--labels=k=v]", RunList},
    {"delete", "ID", RunDelete},
    {"reset", "ID", RunReset},
    {"fork", "ID [--id=NEW_ID]", RunFork},
    {"ingest",
     "ID FILE [--token_file] [--end_of_document=false] [--parse_special_tokens "
     "--add_bos=true|false]   (progress bar on stderr)",
     RunIngest},
    {"generate",
     "ID [--text=PROMPT | --tokens=IDS] [--max_tokens --temperature --top_k --top_p --seed "
     "--stop=a,b --commit --ignore_eos --parse_special_tokens --add_bos=true|false]",
     RunGenerate},
    {"score", "ID (--text=TEXT | --tokens=IDS) [--parse_special_tokens --add_bos=true|false]",
     RunScore},
    {"checkpoint", "ID [--checkpoint_id=NAME]", RunCheckpoint},
    {"checkpoints", "", RunCheckpoints},
    {"delete-checkpoint", "NAME", RunDeleteCheckpoint},
    {"restore", "NAME [--session=ID | --id=NEW_ID]", RunRestore},
    {"export", "(ID | --checkpoint_id=NAME) --out=FILE", RunExport},
    {"import", "FILE [--id=NEW_ID]", RunImport},
    {"loadgen",
     "N [--doc_tokens=1024 --max_tokens=64 --baseline=1 --mix=default|decode "
     "--background_ingest_tokens=0 --protocol=grpc|http --http_address=HOST:PORT "
     "--measure=all|decode]",
     RunLoadgen},
    {"stress",
     "[--target=HOST:PORT --clients=N --duration_s=S --seed=N --server_pid=PID "
     "--report_json=PATH ...]   (own flags: tools/load/stress.h)",
     RunStress},
};

std::string UsageText() {
  std::string out = "ttt: client for ttt-serve.\n\n";
  for (const Command& c : kCommands) out += "  ttt " + std::string(c.name) + " " + c.usage + "\n";
  out +=
      "Common flags: --address=HOST:PORT (default: $TTT_ADDRESS, else localhost:50051) "
      "--output=text|json --tenant=NAME --timeout_s=S --tls --ca_file=PEM ($TTT_CA_FILE) "
      "--token ($TTT_TOKEN). Results on stdout, diagnostics on stderr; exit 0 ok, 1 a failed "
      "call, 2 a usage error.";
  return out;
}

}  // namespace

int Usage(const std::string& why) {
  std::fprintf(stderr, "ttt: %s\n\n%s\n", why.c_str(), UsageText().c_str());
  return 2;
}

}  // namespace ttt::cli

int main(int argc, char** argv) {
  // Lines reach a pipe in the order they were written, stdout's among stderr's.
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  absl::SetProgramUsageMessage(ttt::cli::UsageText());
  // `stress` parses its own flags (its --seed is not the CLI's), so it runs before absl's parser.
  if (argc >= 2 && std::string(argv[1]) == "stress") return ttt::cli::RunStress(argc - 1, argv + 1);
  std::vector<char*> args = ttt::util::ParseFlagsWithHelp(argc, argv, "cli/flags.cc", [] {
    return std::string("ttt ") + TTT_VERSION + " (" + TTT_GIT_DESCRIBE + ")\n";
  });
  if (!ttt::cli::ValidOutputFlag()) return ttt::cli::Usage("--output must be text or json");
  if (args.size() < 2) return ttt::cli::Usage("no command");
  const std::string name = args[1];
  for (const auto& c : ttt::cli::kCommands) {
    if (name == c.name) return c.run(static_cast<int>(args.size()) - 1, args.data() + 1);
  }
  return ttt::cli::Usage("unknown command '" + name + "'");
}
