// libFuzzer target: the server's request conversion and validation (server/internal/convert.h,
// the import byte checks of server/internal/import_guard.h, and the id, tenant and message-echo
// rules the session layer applies before it touches a session) for every RPC of
// tttserve.v1.TttService, on arbitrary bytes. The first byte picks the RPC, the second is a
// split point for the streaming checks, the rest is parsed with protobuf's ParseFromString as
// that RPC's request. Nothing may crash, and every refusal must be a clear status: the code the
// contract gives (docs/contract.md) and a short message, whatever was sent.
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "google/protobuf/stubs/logging.h"
#include "server/internal/convert.h"
#include "server/internal/import_guard.h"
#include "session/internal/names.h"
#include "session/session.h"
#include "tests/fuzz/fuzz_check.h"
#include "tokenizer/tokenizer.h"
#include "tttserve/v1/ttt_service.pb.h"

namespace {

namespace pb = tttserve::v1;
using ttt::server::ServiceLimits;
namespace internal = ttt::server::internal;

// Small limits, so that inputs of fuzzing size reach the limit checks too.
ServiceLimits Limits() {
  ServiceLimits l;
  l.max_tokens_per_message = 64;
  l.max_text_bytes_per_message = 256;
  return l;
}

// The shipped model's tokenizer (SentencePiece, read natively); text is tokenized through it.
const ttt::tokenizer::Tokenizer* Tok() {
  static const ttt::tokenizer::Tokenizer* const tok = [] {
    auto loaded = ttt::tokenizer::Tokenizer::Load(TTT_SOURCE_DIR "/models/ttt-brown");
    FUZZ_CHECK(loaded.ok(), "%s", loaded.status().ToString().c_str());
    return loaded->release();
  }();
  return tok;
}

// A refusal: one of the codes the contract allows here, and a message that stays short (client
// input is echoed as a bounded prefix, never whole).
void CheckRefusal(const absl::Status& st, std::initializer_list<absl::StatusCode> allowed,
                  const char* what) {
  if (st.ok()) return;
  bool known = false;
  for (absl::StatusCode c : allowed) known = known || st.code() == c;
  FUZZ_CHECK(known, "%s: unexpected status %s", what, st.ToString().c_str());
  FUZZ_CHECK(!st.message().empty() && st.message().size() < 1024, "%s: message of %zu bytes", what,
             st.message().size());
}

// Text as Ingest and Score take it: tokenized (ids inside the vocabulary), or refused as
// malformed UTF-8 exactly when ValidateUtf8 refuses it.
void CheckText(const std::string& text) {
  auto ids =
      ttt::server::core::Tokenize(Tok(), text, "fuzz text", ttt::tokenizer::SpecialTokens::kAsText);
  const bool utf8 = ttt::tokenizer::ValidateUtf8(text).ok();
  FUZZ_CHECK(ids.ok() == utf8, "Tokenize %s text that ValidateUtf8 %s",
             ids.ok() ? "took" : "refused", utf8 ? "accepts" : "refuses");
  if (!ids.ok()) {
    CheckRefusal(ids.status(), {absl::StatusCode::kInvalidArgument}, "Tokenize");
    return;
  }
  for (int32_t id : *ids) {
    FUZZ_CHECK(id >= 0 && id < Tok()->vocab_size(), "token %d outside [0, %d)", id,
               static_cast<int>(Tok()->vocab_size()));
  }
}

// An Ingest flush at byte `cut` of valid text: the whole characters before it tokenize, and the
// cut character's first bytes (carried to the next message) complete with the rest.
void CheckFlushAt(const std::string& text, size_t cut) {
  if (!ttt::tokenizer::ValidateUtf8(text).ok()) return;
  cut %= text.size() + 1;
  const std::string head = text.substr(0, cut);
  const size_t carry = ttt::tokenizer::IncompleteUtf8Tail(head);
  FUZZ_CHECK(carry <= 3 && carry <= head.size(), "carry of %zu bytes", carry);
  FUZZ_CHECK(ttt::tokenizer::ValidateUtf8(head.substr(0, cut - carry)).ok(),
             "the whole characters before a cut at %zu do not validate", cut);
  FUZZ_CHECK(ttt::tokenizer::ValidateUtf8(text.substr(cut - carry)).ok(),
             "the carried bytes and the rest after a cut at %zu do not validate", cut);
}

// Session, checkpoint and tenant ids: accepted by the session layer's rule, or refused with
// INVALID_ARGUMENT; an id echoed into a message stays short and printable.
void CheckId(const std::string& id, const char* what, size_t max_len) {
  if (id.empty()) return;  // "not set": each RPC decides (generated id, required field)
  CheckRefusal(ttt::session::internal::ValidateName(id, what, max_len),
               {absl::StatusCode::kInvalidArgument}, what);
  const std::string quoted = ttt::session::internal::Quote(id);
  FUZZ_CHECK(quoted.size() <= 4 * 64 + 40, "Quote gave %zu bytes", quoted.size());
  for (char c : quoted) {
    FUZZ_CHECK(c >= 0x20 && c < 0x7f, "Quote left byte 0x%02x", static_cast<unsigned char>(c));
  }
}

void CheckOptions(const pb::SessionOptions& o) {
  const ttt::session::SessionOptions s = internal::FromProto(o);
  pb::SessionOptions back;
  internal::ToProto(s, &back);
  FUZZ_CHECK(back.labels_size() == o.labels_size() &&
                 back.reset_at_document_end() == o.reset_at_document_end() &&
                 back.idle_ttl_seconds() == o.idle_ttl_seconds(),
             "SessionOptions do not survive FromProto/ToProto");
}

void CheckIngest(const pb::IngestRequest& req, size_t cut) {
  CheckId(req.session_id(), "session id", 128);
  const absl::Status st = internal::ValidateIngestMessage(req, Limits(), "Ingest message 0");
  CheckRefusal(st, {absl::StatusCode::kInvalidArgument}, "ValidateIngestMessage");
  if (!st.ok()) return;
  FUZZ_CHECK(req.text().empty() || req.token_ids().empty(), "text and ids both accepted");
  if (!req.text().empty()) {
    CheckText(req.text());
    CheckFlushAt(req.text(), cut);
  }
}

void CheckGenerate(const pb::GenerateRequest& req) {
  CheckId(req.session_id(), "session id", 128);
  const auto encoding = internal::TextEncodingOf(Tok(), req.text_options());
  auto prompt = internal::InputTokens(Limits(), Tok(), req.prompt_text(), req.prompt_token_ids(),
                                      "the prompt", encoding, /*starts_context=*/true);
  CheckRefusal(prompt.status(), {absl::StatusCode::kInvalidArgument}, "the prompt");
  const ttt::session::GenerateParams p = internal::GenerateParamsFromProto(req);
  FUZZ_CHECK(req.max_tokens() != 0 || p.max_tokens == 64, "max_tokens 0 is not the default 64");
  FUZZ_CHECK(req.has_temperature() || p.sampling.temperature == 1.0, "unset temperature is not 1");
  FUZZ_CHECK(req.has_top_p() || p.sampling.top_p == 1.0, "unset top_p is not 1");
  FUZZ_CHECK(p.commit == req.commit() && p.stop_at_eos == !req.ignore_eos(), "flags lost");
  const absl::Status stops = internal::ValidateStops(req);
  CheckRefusal(stops, {absl::StatusCode::kInvalidArgument}, "ValidateStops");
  if (stops.ok()) {
    FUZZ_CHECK(req.stop_size() <= internal::kMaxStops, "%d stops accepted", req.stop_size());
  }
}

void CheckScore(const pb::ScoreRequest& req) {
  CheckId(req.session_id(), "session id", 128);
  const auto encoding = internal::TextEncodingOf(Tok(), req.text_options());
  auto tokens = internal::InputTokens(Limits(), Tok(), req.text(), req.token_ids(),
                                      "the Score request", encoding, /*starts_context=*/false);
  CheckRefusal(tokens.status(), {absl::StatusCode::kInvalidArgument}, "the Score request");
  if (tokens.ok() && req.text().empty()) {
    FUZZ_CHECK(static_cast<int>(tokens->size()) == req.token_ids_size(), "ids changed");
  }
}

// The import's bytes in two pieces split at `cut`, as ImportGuard sees them arrive.
void CheckImport(const pb::ImportSessionRequest& req, size_t cut) {
  if (req.has_options()) CheckOptions(req.options());
  internal::ImportLimits limits;
  limits.max_total_bytes = 1 << 16;
  internal::ImportGuard guard(limits);
  const std::string& data = req.data();
  cut %= data.size() + 1;
  absl::Status st = guard.Append(data.substr(0, cut));
  if (st.ok()) st = guard.Append(data.substr(cut));
  CheckRefusal(st,
               {absl::StatusCode::kResourceExhausted, absl::StatusCode::kInvalidArgument,
                absl::StatusCode::kDataLoss},
               "ImportGuard");
  if (st.ok()) {
    FUZZ_CHECK(guard.size() == static_cast<int64_t>(data.size()), "bytes lost");
    FUZZ_CHECK(guard.size() <= limits.max_total_bytes, "over the total limit");
  }
}

// Parses `bytes` as `Req` and runs `check` on it; bytes that are no such message are refused by
// gRPC before any handler runs.
template <typename Req, typename Check>
void Run(const std::string& bytes, Check check) {
  Req req;
  if (!req.ParseFromString(bytes)) return;
  check(req);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Protobuf logs every string field it refuses as invalid UTF-8: that is most inputs.
  static const bool quiet = (google::protobuf::SetLogHandler(nullptr), true);
  (void)quiet;
  if (size < 2) return 0;
  const int rpc = data[0] % 19;
  const size_t cut = data[1];
  const std::string bytes(reinterpret_cast<const char*>(data + 2), size - 2);
  switch (rpc) {
    case 0:
      Run<pb::GetServerInfoRequest>(bytes, [](const auto&) {});
      break;
    case 1:
      Run<pb::CreateSessionRequest>(bytes, [](const auto& r) { CheckOptions(r.options()); });
      break;
    case 2:
      Run<pb::GetSessionRequest>(bytes, [](const auto& r) { CheckId(r.session_id(), "id", 128); });
      break;
    case 3:
      Run<pb::ListSessionsRequest>(bytes, [](const auto& r) {
        // As the handler hands it to the session manager.
        const std::map<std::string, std::string> selector(r.label_selector().begin(),
                                                          r.label_selector().end());
        FUZZ_CHECK(selector.size() == r.label_selector().size(), "labels lost");
      });
      break;
    case 4:
      Run<pb::DeleteSessionRequest>(bytes,
                                    [](const auto& r) { CheckId(r.session_id(), "id", 128); });
      break;
    case 5:
      Run<pb::IngestRequest>(bytes, [cut](const auto& r) { CheckIngest(r, cut); });
      break;
    case 6:
      Run<pb::GenerateRequest>(bytes, [](const auto& r) { CheckGenerate(r); });
      break;
    case 7:
      Run<pb::ScoreRequest>(bytes, [](const auto& r) { CheckScore(r); });
      break;
    case 8:
      Run<pb::CheckpointRequest>(bytes, [](const auto& r) {
        CheckId(r.session_id(), "session id", 128);
        CheckId(r.checkpoint_id(), "checkpoint id", 128);
      });
      break;
    case 9:
      Run<pb::RestoreRequest>(bytes, [](const auto& r) {
        CheckId(r.checkpoint_id(), "checkpoint id", 128);
        CheckId(r.session_id(), "session id", 128);
        if (r.has_options()) CheckOptions(r.options());
      });
      break;
    case 10:
      Run<pb::ResetRequest>(bytes, [](const auto& r) { CheckId(r.session_id(), "id", 128); });
      break;
    case 11:
      Run<pb::ForkRequest>(bytes, [](const auto& r) {
        CheckId(r.session_id(), "session id", 128);
        if (r.has_options()) CheckOptions(r.options());
      });
      break;
    case 12:
      Run<pb::ListCheckpointsRequest>(bytes, [](const auto&) {});
      break;
    case 13:
      Run<pb::DeleteCheckpointRequest>(
          bytes, [](const auto& r) { CheckId(r.checkpoint_id(), "checkpoint id", 128); });
      break;
    case 14:
      Run<pb::ExportSessionRequest>(bytes, [](const auto& r) {
        CheckId(r.session_id(), "session id", 128);
        CheckId(r.checkpoint_id(), "checkpoint id", 128);
      });
      break;
    case 15:
      Run<pb::ImportSessionRequest>(bytes, [cut](const auto& r) { CheckImport(r, cut); });
      break;
    default:
      // The tenant header (x-tenant-id) is a string of the client's too.
      CheckRefusal(ttt::session::SessionManager::ValidateTenant(bytes),
                   {absl::StatusCode::kInvalidArgument}, "x-tenant-id");
      CheckId(bytes, "tenant", 64);
      break;
  }
  return 0;
}
