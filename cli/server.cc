// ttt health (the container health check: exit 0 when SERVING) and ttt info.
#include <chrono>
#include <cstdio>

#include "absl/flags/flag.h"
#include "cli/client.h"
#include "cli/commands.h"
#include "cli/flags.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace ttt::cli {

namespace pb = tttserve::v1;

int RunHealth(int, char**) {
  auto health = grpc::health::v1::Health::NewStub(Channel());
  grpc::health::v1::HealthCheckRequest req;
  req.set_service(absl::GetFlag(FLAGS_service));
  grpc::health::v1::HealthCheckResponse resp;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  grpc::Status st = health->Check(&ctx, req, &resp);
  if (!st.ok()) return Fail(st);
  const bool serving = resp.status() == grpc::health::v1::HealthCheckResponse::SERVING;
  if (JsonOutput()) {
    PrintJson(resp);
  } else {
    std::printf("%s\n", serving ? "SERVING" : "NOT_SERVING");
  }
  return serving ? 0 : 1;
}

int RunInfo(int, char**) {
  pb::ServerInfo info;
  grpc::Status st = Stub()->GetServerInfo(Context().get(), pb::GetServerInfoRequest(), &info);
  if (!st.ok()) return Fail(st);
  if (JsonOutput()) {
    PrintJson(info);
  } else {
    std::printf("%s", info.DebugString().c_str());
  }
  return 0;
}

}  // namespace ttt::cli
