// What every ttt subcommand shares: the channel and stub from --address, a call context with
// the deadline and tenant, error and usage reporting, input parsing and printing.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "tttserve/v1/ttt_service.grpc.pb.h"

namespace ttt::cli {

// A subcommand: argv[0] is its name, argv[1..] its positional arguments (flags are parsed
// before). Returns the process exit code: 0 success, 1 a failed call, 2 a usage error.
using Handler = int (*)(int argc, char** argv);

// argv[i] or "" past the end.
std::string Arg(int argc, char** argv, int i);

std::shared_ptr<grpc::Channel> Channel();  // one per process, to --address
std::unique_ptr<tttserve::v1::TttService::Stub> Stub();
// --timeout_s deadline and the --tenant header; with a session id, also the x-session-id
// header, the routing key a proxy in front of several replicas hashes (deploy/README.md).
std::unique_ptr<grpc::ClientContext> Context(const std::string& session_id = "");

// TextOptions from --parse_special_tokens and --add_bos; false when --add_bos is neither empty,
// true nor false.
bool TextOptionsFromFlags(tttserve::v1::TextOptions* out);

// Prints "ttt: CODE: message" to stderr; returns 1.
int Fail(const grpc::Status& s);
// Prints why and the usage of every subcommand (main.cc); returns 2.
int Usage(const std::string& why);

// Token ids separated by spaces, commas, tabs or newlines; false on a non-integer.
bool ParseIds(const std::string& s, std::vector<int32_t>* out);
// k=v,k2=v2.
std::map<std::string, std::string> ParseLabels(const std::string& s);

void PrintCounters(const tttserve::v1::SessionCounters& c);
void PrintSession(const tttserve::v1::Session& s);
void PrintCheckpoint(const tttserve::v1::CheckpointInfo& c);

}  // namespace ttt::cli
