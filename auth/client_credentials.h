// The client side of auth/, for the `ttt` CLI, loadgen and the stress client: channel
// credentials from --tls / --ca_file / --cert_file / --key_file, and a bearer token sent on
// every call of a channel (--token, or TTT_TOKEN from the environment so it stays out of `ps`).
//
// Thread-safety: thread-safe.
#pragma once

#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"

namespace ttt::auth {

struct ClientAuthOptions {
  bool tls = false;       // implied by any of the files below
  std::string ca_file;    // PEM roots to trust; empty: the system's
  std::string cert_file;  // client certificate (mutual TLS); needs key_file
  std::string key_file;
  std::string token;  // bearer token; empty: none
};

// `flag` when set, else $TTT_TOKEN, else "".
std::string TokenFromFlagOrEnvironment(const std::string& flag);

// A channel to `target` with those credentials, every call carrying
// `authorization: Bearer <token>` when a token is set. INVALID_ARGUMENT names the flag whose
// file cannot be read, or a certificate without its key.
absl::StatusOr<std::shared_ptr<grpc::Channel>> CreateAuthChannel(
    const std::string& target, const ClientAuthOptions& options,
    const grpc::ChannelArguments& args = grpc::ChannelArguments());

}  // namespace ttt::auth
