// ttt ingest ID FILE: streams a text file (in blocks ending at newlines, each flushed) or a file
// of token ids into a session, with a progress bar and the running loss on stderr.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "cli/client.h"
#include "cli/commands.h"
#include "cli/flags.h"

namespace ttt::cli {

namespace pb = tttserve::v1;
using Clock = std::chrono::steady_clock;

namespace {

// The messages of one ingest, and the input units (bytes or tokens) covered after each.
struct Plan {
  std::vector<pb::IngestRequest> msgs;
  std::vector<int64_t> ends;
};

void PlanTokens(const std::vector<int32_t>& ids, Plan* plan) {
  const size_t per = static_cast<size_t>(std::max<int64_t>(1, absl::GetFlag(FLAGS_message_tokens)));
  for (size_t i = 0; i < ids.size(); i += per) {
    pb::IngestRequest r;
    for (size_t j = i; j < std::min(ids.size(), i + per); ++j) r.add_token_ids(ids[j]);
    plan->msgs.push_back(std::move(r));
    plan->ends.push_back(static_cast<int64_t>(std::min(ids.size(), i + per)));
  }
}

// Text goes in blocks ending at a newline; each block is flushed (tokenized) on its own.
void PlanText(const std::string& content, Plan* plan) {
  const size_t per = static_cast<size_t>(std::max<int64_t>(1, absl::GetFlag(FLAGS_message_bytes)));
  size_t pos = 0;
  while (pos < content.size()) {
    size_t end = std::min(content.size(), pos + per);
    if (end < content.size()) {
      const size_t nl = content.rfind('\n', end);
      if (nl != std::string::npos && nl > pos) end = nl + 1;
    }
    pb::IngestRequest r;
    r.set_text(content.substr(pos, end - pos));
    r.set_flush(true);
    plan->msgs.push_back(std::move(r));
    plan->ends.push_back(static_cast<int64_t>(end));
    pos = end;
  }
}

// The first message names the session, the last ends the document (or flushes), all report
// the loss.
void FinishPlan(const std::string& id, Plan* plan) {
  if (plan->msgs.empty()) {
    plan->msgs.emplace_back();
    plan->ends.push_back(0);
  }
  plan->msgs.front().set_session_id(id);
  pb::IngestRequest& last = plan->msgs.back();
  if (absl::GetFlag(FLAGS_end_of_document)) last.set_end_of_document(true);
  if (!last.end_of_document() && last.text().empty() && last.token_ids().empty()) {
    last.set_flush(true);
  }
  for (auto& m : plan->msgs) m.set_report_loss(true);
}

void PrintProgress(const pb::IngestResponse& resp, const Plan& plan, Clock::time_point start,
                   bool tty) {
  const int64_t total = plan.ends.back();
  const int64_t done = plan.ends[std::min<size_t>(resp.message_index(), plan.ends.size() - 1)];
  const double frac = total > 0 ? static_cast<double>(done) / static_cast<double>(total) : 1.0;
  const int width = 30;
  const int filled = static_cast<int>(frac * width);
  const double secs = std::chrono::duration<double>(Clock::now() - start).count();
  std::fprintf(stderr, "%s[%s%s] %3.0f%% %lld tokens, %lld chunks, loss %.4f, %.0f tok/s%s",
               tty ? "\r" : "", std::string(filled, '#').c_str(),
               std::string(width - filled, '.').c_str(), frac * 100,
               static_cast<long long>(resp.stream_tokens()),
               static_cast<long long>(resp.counters().chunks_applied()), resp.loss(),
               secs > 0 ? static_cast<double>(resp.stream_tokens()) / secs : 0.0, tty ? "" : "\n");
}

}  // namespace

int RunIngest(int argc, char** argv) {
  const std::string id = Arg(argc, argv, 1), path = Arg(argc, argv, 2);
  if (id.empty() || path.empty()) return Usage("ingest needs a session id and a file");
  std::ifstream in(path, std::ios::binary);
  if (!in) return Usage("cannot open " + path);
  std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  Plan plan;
  if (absl::GetFlag(FLAGS_token_file)) {
    std::vector<int32_t> ids;
    if (!ParseIds(content, &ids)) return Usage(path + " does not hold token ids");
    PlanTokens(ids, &plan);
  } else {
    PlanText(content, &plan);
  }
  FinishPlan(id, &plan);
  if (!TextOptionsFromFlags(plan.msgs.front().mutable_text_options())) {
    return Usage("--add_bos must be true, false or empty");
  }

  auto stub = Stub();
  auto ctx = Context(id);
  auto stream = stub->Ingest(ctx.get());
  std::thread writer([&] {
    for (const auto& m : plan.msgs) {
      if (!stream->Write(m)) break;
    }
    stream->WritesDone();
  });
  const bool tty = isatty(fileno(stderr));
  const auto start = Clock::now();
  pb::IngestResponse resp, last;
  while (stream->Read(&resp)) {
    last = resp;
    PrintProgress(resp, plan, start, tty);
  }
  writer.join();
  grpc::Status st = stream->Finish();
  if (tty) std::fprintf(stderr, "\n");
  if (!st.ok()) return Fail(st);
  if (JsonOutput()) {
    PrintJson(last);  // the last acknowledgement: tokens, loss, counters
    return 0;
  }
  std::printf("ingested %lld tokens into %s; loss %.4f (perplexity %.3f over %lld tokens)\n",
              static_cast<long long>(last.stream_tokens()), id.c_str(), last.loss(),
              last.perplexity(), static_cast<long long>(last.loss_tokens()));
  PrintCounters(last.counters());
  return 0;
}

}  // namespace ttt::cli
