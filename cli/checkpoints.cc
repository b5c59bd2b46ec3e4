// ttt checkpoint, checkpoints, delete-checkpoint, restore, export and import: a session's state
// saved on the server or carried out of it and back.
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>

#include <nlohmann/json.hpp>

#include "absl/flags/flag.h"
#include "cli/client.h"
#include "cli/commands.h"
#include "cli/flags.h"

namespace ttt::cli {

namespace pb = tttserve::v1;

int RunCheckpoint(int argc, char** argv) {
  pb::CheckpointRequest req;
  req.set_session_id(Arg(argc, argv, 1));
  req.set_checkpoint_id(absl::GetFlag(FLAGS_checkpoint_id));
  pb::CheckpointInfo resp;
  grpc::Status st = Stub()->Checkpoint(Context(req.session_id()).get(), req, &resp);
  if (!st.ok()) return Fail(st);
  if (JsonOutput()) {
    PrintJson(resp);
  } else {
    PrintCheckpoint(resp);
  }
  return 0;
}

int RunCheckpoints(int, char**) {
  pb::ListCheckpointsResponse resp;
  grpc::Status st = Stub()->ListCheckpoints(Context().get(), pb::ListCheckpointsRequest(), &resp);
  if (!st.ok()) return Fail(st);
  if (JsonOutput()) {
    PrintJson(resp);
    return 0;
  }
  for (const auto& c : resp.checkpoints()) PrintCheckpoint(c);
  return 0;
}

int RunDeleteCheckpoint(int argc, char** argv) {
  pb::DeleteCheckpointRequest req;
  req.set_checkpoint_id(Arg(argc, argv, 1));
  pb::DeleteCheckpointResponse resp;
  grpc::Status st = Stub()->DeleteCheckpoint(Context().get(), req, &resp);
  if (!st.ok()) return Fail(st);
  if (JsonOutput()) {
    PrintJsonText(nlohmann::json{{"deleted_checkpoint_id", req.checkpoint_id()}}.dump());
  } else {
    std::printf("deleted checkpoint %s\n", req.checkpoint_id().c_str());
  }
  return 0;
}

int RunRestore(int argc, char** argv) {
  pb::RestoreRequest req;
  req.set_checkpoint_id(Arg(argc, argv, 1));
  req.set_session_id(absl::GetFlag(FLAGS_session));
  req.set_new_session_id(absl::GetFlag(FLAGS_id));
  pb::Session s;
  grpc::Status st = Stub()->Restore(
      Context(req.session_id().empty() ? req.new_session_id() : req.session_id()).get(), req, &s);
  if (!st.ok()) return Fail(st);
  PrintCreatedSession(s);  // the restored session's id alone: `id=$(ttt restore NAME)`
  return 0;
}

int RunExport(int argc, char** argv) {
  const std::string path = absl::GetFlag(FLAGS_out);
  if (path.empty()) return Usage("export needs --out=FILE");
  pb::ExportSessionRequest req;
  req.set_session_id(Arg(argc, argv, 1));
  req.set_checkpoint_id(absl::GetFlag(FLAGS_checkpoint_id));
  auto stub = Stub();
  auto ctx = Context(req.session_id());
  auto reader = stub->ExportSession(ctx.get(), req);
  std::string data;
  pb::ExportSessionResponse resp;
  while (reader->Read(&resp)) data += resp.data();
  grpc::Status st = reader->Finish();
  if (!st.ok()) return Fail(st);
  std::ofstream out(path, std::ios::binary);
  out << data;
  if (!out) return Usage("cannot write " + path);
  if (JsonOutput()) {
    PrintJsonText(nlohmann::json{{"bytes", data.size()}, {"path", path}}.dump());
  } else {
    std::printf("exported %zu bytes to %s\n", data.size(), path.c_str());
  }
  return 0;
}

int RunImport(int argc, char** argv) {
  const std::string path = Arg(argc, argv, 1);
  std::ifstream in(path, std::ios::binary);
  if (!in) return Usage("cannot open " + path);
  std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string new_id = absl::GetFlag(FLAGS_id);
  auto stub = Stub();
  auto ctx = Context(new_id);
  pb::Session s;
  auto writer = stub->ImportSession(ctx.get(), &s);
  constexpr size_t kPiece = size_t{1} << 20;
  for (size_t i = 0; i < data.size(); i += kPiece) {
    pb::ImportSessionRequest req;
    if (i == 0) req.set_session_id(new_id);
    req.set_data(data.substr(i, kPiece));
    if (!writer->Write(req)) break;
  }
  writer->WritesDone();
  grpc::Status st = writer->Finish();
  if (!st.ok()) return Fail(st);
  PrintCreatedSession(s);  // the imported session's id alone
  return 0;
}

}  // namespace ttt::cli
