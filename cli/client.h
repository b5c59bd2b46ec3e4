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

// Where to connect: --address, else the TTT_ADDRESS environment variable, else localhost:50051.
std::string Address();
std::shared_ptr<grpc::Channel> Channel();  // one per process, to Address()
std::unique_ptr<tttserve::v1::TttService::Stub> Stub();
// --timeout_s deadline and the --tenant header; with a session id, also the x-session-id
// header, the routing key a proxy in front of several replicas hashes (deploy/README.md).
std::unique_ptr<grpc::ClientContext> Context(const std::string& session_id = "");

// TextOptions from --parse_special_tokens and --add_bos; false when --add_bos is neither empty,
// true nor false.
bool TextOptionsFromFlags(tttserve::v1::TextOptions* out);

// Prints "ttt: CODE [REASON, retry in Ns]: message" to stderr (after what stdout holds), with a
// hint for connection failures whose gRPC message says nothing useful (ConnectionHint); returns 1.
int Fail(const grpc::Status& s);
// What to try when `s` is a connection failure: a TLS port dialled in plaintext ("Socket
// closed"), a plaintext port dialled with TLS (a failed handshake), or nothing listening. "" for
// anything else. `tls`: whether the channel used TLS.
std::string ConnectionHint(const grpc::Status& s, bool tls, const std::string& address);
// Prints why and the usage of every subcommand (main.cc); returns 2.
int Usage(const std::string& why);

// Token ids separated by spaces, commas, tabs or newlines; false on a non-integer.
bool ParseIds(const std::string& s, std::vector<int32_t>* out);
// k=v,k2=v2.
std::map<std::string, std::string> ParseLabels(const std::string& s);

// --output: results go to stdout as text (default) or, with json, as one JSON object per
// command (protobuf's JSON mapping with the proto's field names and every field present; 64-bit
// integers as strings, as that mapping has them). Diagnostics always go to stderr.
bool JsonOutput();
// False (and a usage message, exit 2) when --output is neither text nor json.
bool ValidOutputFlag();
// Prints `message` as one line of JSON on stdout.
void PrintJson(const google::protobuf::Message& message);
// Prints `json` (already JSON) and a newline on stdout.
void PrintJsonText(const std::string& json);

// A session a command created (create, fork, restore, import): its id alone (for
// `id=$(ttt fork ...)`), or the whole session as JSON.
void PrintCreatedSession(const tttserve::v1::Session& s);
// A session (get, reset): its fields, or JSON.
void PrintSessionResult(const tttserve::v1::Session& s);

void PrintCounters(const tttserve::v1::SessionCounters& c);
void PrintSession(const tttserve::v1::Session& s);
void PrintCheckpoint(const tttserve::v1::CheckpointInfo& c);

}  // namespace ttt::cli
