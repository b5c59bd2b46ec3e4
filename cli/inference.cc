// ttt generate and ttt score: the two calls that run the model on a session.
#include <cstdio>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "cli/client.h"
#include "cli/commands.h"
#include "cli/flags.h"

namespace ttt::cli {

namespace pb = tttserve::v1;

namespace {
// Sets text or token ids from --text / --tokens. Returns false on malformed ids.
template <typename Req>
bool SetInput(Req* req, void (Req::*set_text)(const std::string&),
              google::protobuf::RepeatedField<int32_t>* ids) {
  if (!absl::GetFlag(FLAGS_text).empty()) (req->*set_text)(absl::GetFlag(FLAGS_text));
  std::vector<int32_t> v;
  if (!ParseIds(absl::GetFlag(FLAGS_tokens), &v)) return false;
  for (int32_t t : v) ids->Add(t);
  return true;
}

void SetSampling(pb::GenerateRequest* req) {
  req->set_max_tokens(absl::GetFlag(FLAGS_max_tokens));
  req->set_temperature(absl::GetFlag(FLAGS_temperature));
  req->set_top_k(absl::GetFlag(FLAGS_top_k));
  req->set_top_p(absl::GetFlag(FLAGS_top_p));
  req->set_seed(absl::GetFlag(FLAGS_seed));
  for (const auto& s : absl::GetFlag(FLAGS_stop)) req->add_stop(s);
  req->set_commit(absl::GetFlag(FLAGS_commit));
  req->set_ignore_eos(absl::GetFlag(FLAGS_ignore_eos));
}
}  // namespace

// Text streams to stdout as it arrives; the token ids and finish reason follow (on stderr when
// there was text, so stdout holds just the text, and after it when both go to one pipe). With
// --output=json: one object {text, token_ids, finish_reason} once the stream ends.
int RunGenerate(int argc, char** argv) {
  pb::GenerateRequest req;
  req.set_session_id(Arg(argc, argv, 1));
  if (!TextOptionsFromFlags(req.mutable_text_options())) {
    return Usage("--add_bos must be true, false or empty");
  }
  if (!SetInput(&req, &pb::GenerateRequest::set_prompt_text, req.mutable_prompt_token_ids())) {
    return Usage("--tokens must be integers");
  }
  SetSampling(&req);
  auto stub = Stub();
  auto ctx = Context(req.session_id());
  auto reader = stub->Generate(ctx.get(), req);
  pb::GenerateResponse resp;
  std::vector<int32_t> ids;
  bool any_text = false;
  pb::FinishReason reason = pb::FINISH_REASON_UNSPECIFIED;
  const bool json = JsonOutput();
  std::string text;
  while (reader->Read(&resp)) {
    if (resp.has_token_id()) ids.push_back(resp.token_id());
    if (!resp.text().empty()) {
      any_text = true;
      text += resp.text();
      if (!json) {
        std::fwrite(resp.text().data(), 1, resp.text().size(), stdout);
        std::fflush(stdout);
      }
    }
    if (resp.finish_reason() != pb::FINISH_REASON_UNSPECIFIED) reason = resp.finish_reason();
  }
  grpc::Status st = reader->Finish();
  if (!st.ok()) return Fail(st);
  if (json) {
    PrintJsonText(nlohmann::json{
        {"text", text}, {"token_ids", ids}, {"finish_reason", pb::FinishReason_Name(reason)}}
                      .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
    return 0;
  }
  if (any_text) std::printf("\n");
  std::fflush(stdout);  // the text before the summary when both go to one pipe
  std::string joined;
  for (int32_t t : ids) absl::StrAppend(&joined, joined.empty() ? "" : " ", t);
  std::fprintf(any_text ? stderr : stdout, "tokens: %s\nfinish: %s\n", joined.c_str(),
               pb::FinishReason_Name(reason).c_str());
  return 0;
}

int RunScore(int argc, char** argv) {
  pb::ScoreRequest req;
  req.set_session_id(Arg(argc, argv, 1));
  if (!TextOptionsFromFlags(req.mutable_text_options())) {
    return Usage("--add_bos must be true, false or empty");
  }
  if (!SetInput(&req, &pb::ScoreRequest::set_text, req.mutable_token_ids())) {
    return Usage("--tokens must be integers");
  }
  pb::ScoreResponse resp;
  grpc::Status st = Stub()->Score(Context(req.session_id()).get(), req, &resp);
  if (!st.ok()) return Fail(st);
  if (JsonOutput()) {
    PrintJson(resp);
    return 0;
  }
  for (int i = 0; i < resp.token_ids_size(); ++i) {
    std::printf("%d\t%.6f\n", resp.token_ids(i), resp.logprobs(i));
  }
  std::printf("total logprob %.6f, mean nll %.6f, perplexity %.4f\n", resp.total_logprob(),
              resp.mean_nll(), resp.perplexity());
  return 0;
}

}  // namespace ttt::cli
