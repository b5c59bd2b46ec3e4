// ttt create, get, list, delete, reset, fork: the session lifecycle.
#include <cstdio>
#include <string>

#include <nlohmann/json.hpp>

#include "absl/flags/flag.h"
#include "cli/client.h"
#include "cli/commands.h"
#include "cli/flags.h"

namespace ttt::cli {

namespace pb = tttserve::v1;

namespace {
// get / reset: one session id in, one Session out, printed by `print`.
template <typename Request, typename Call>
int SessionCall(int argc, char** argv, Call call, void (*print)(const pb::Session&)) {
  const std::string id = Arg(argc, argv, 1);
  if (id.empty()) return Usage(std::string(argv[0]) + " needs a session id");
  Request req;
  req.set_session_id(id);
  pb::Session s;
  auto stub = Stub();
  grpc::Status st = ((*stub).*call)(Context(id).get(), req, &s);
  if (!st.ok()) return Fail(st);
  print(s);
  return 0;
}
}  // namespace

int RunCreate(int, char**) {
  pb::CreateSessionRequest req;
  req.set_session_id(absl::GetFlag(FLAGS_id));
  req.mutable_options()->set_reset_at_document_end(absl::GetFlag(FLAGS_reset_at_document_end));
  req.mutable_options()->set_fade_at_document_end(
      static_cast<float>(absl::GetFlag(FLAGS_fade_at_document_end)));
  req.mutable_options()->set_idle_ttl_seconds(absl::GetFlag(FLAGS_idle_ttl_s));
  for (const auto& [k, v] : ParseLabels(absl::GetFlag(FLAGS_labels))) {
    (*req.mutable_options()->mutable_labels())[k] = v;
  }
  pb::Session s;
  grpc::Status st = Stub()->CreateSession(Context(req.session_id()).get(), req, &s);
  if (!st.ok()) return Fail(st);
  PrintCreatedSession(s);
  return 0;
}

int RunGet(int argc, char** argv) {
  return SessionCall<pb::GetSessionRequest>(argc, argv, &pb::TttService::Stub::GetSession,
                                            PrintSessionResult);
}

int RunReset(int argc, char** argv) {
  return SessionCall<pb::ResetRequest>(argc, argv, &pb::TttService::Stub::Reset,
                                       PrintSessionResult);
}

// The x-session-id header routes by the new session's id when the client chose one.
int RunFork(int argc, char** argv) {
  pb::ForkRequest req;
  req.set_session_id(Arg(argc, argv, 1));
  if (req.session_id().empty()) return Usage("fork needs a session id");
  req.set_new_session_id(absl::GetFlag(FLAGS_id));
  const std::string& routed =
      req.new_session_id().empty() ? req.session_id() : req.new_session_id();
  pb::Session s;
  grpc::Status st = Stub()->Fork(Context(routed).get(), req, &s);
  if (!st.ok()) return Fail(st);
  PrintCreatedSession(s);  // the new session's id alone: `copy=$(ttt fork "$id")`
  return 0;
}

int RunList(int, char**) {
  pb::ListSessionsRequest req;
  for (const auto& [k, v] : ParseLabels(absl::GetFlag(FLAGS_labels))) {
    (*req.mutable_label_selector())[k] = v;
  }
  pb::ListSessionsResponse resp;
  grpc::Status st = Stub()->ListSessions(Context().get(), req, &resp);
  if (!st.ok()) return Fail(st);
  if (JsonOutput()) {
    PrintJson(resp);
    return 0;
  }
  for (const auto& s : resp.sessions()) PrintSession(s);
  return 0;
}

int RunDelete(int argc, char** argv) {
  pb::DeleteSessionRequest req;
  req.set_session_id(Arg(argc, argv, 1));
  pb::DeleteSessionResponse resp;
  grpc::Status st = Stub()->DeleteSession(Context(req.session_id()).get(), req, &resp);
  if (!st.ok()) return Fail(st);
  if (JsonOutput()) {
    PrintJsonText(nlohmann::json{{"deleted_session_id", req.session_id()}}.dump());
  } else {
    std::printf("deleted %s\n", req.session_id().c_str());
  }
  return 0;
}

}  // namespace ttt::cli
