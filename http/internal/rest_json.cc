// HTTP/JSON transcoding's translations (see rest_json.h).
#include "http/internal/rest_json.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/util/json_util.h>

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string_view>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "http/internal/openai.h"
#include "util/error_reason.h"

namespace ttt::http::internal {
namespace {

// Whether `text` is well-formed UTF-8 (no overlong forms, surrogates or values past U+10FFFF):
// what a proto string field may hold. A percent-decoded path or query can be any bytes.
bool IsUtf8(std::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    const auto byte = [&](size_t k) { return static_cast<unsigned char>(text[k]); };
    const unsigned char c = byte(i);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    if (n == 0 || i + n > text.size()) return false;
    uint32_t cp = n == 1 ? c : c & (0x7F >> n);
    for (size_t k = 1; k < n; ++k) {
      if ((byte(i + k) & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (byte(i + k) & 0x3F);
    }
    constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n;
  }
  return true;
}

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using Json = nlohmann::json;

// A field by its proto name or its JSON (lowerCamelCase) name.
const FieldDescriptor* FindField(const Descriptor* type, const std::string& name) {
  if (const FieldDescriptor* f = type->FindFieldByName(name)) return f;
  for (int i = 0; i < type->field_count(); ++i) {
    if (type->field(i)->json_name() == name) return type->field(i);
  }
  return nullptr;
}

// A query value as the JSON its field takes: protobuf's JSON parser accepts numbers and enum
// names as strings, and wants true/false as JSON literals.
Json QueryValue(const FieldDescriptor* field, const std::string& value) {
  if (field->cpp_type() == FieldDescriptor::CPPTYPE_BOOL && (value == "true" || value == "false")) {
    return value == "true";
  }
  return value;
}

// Puts one `a.b.c=value` into `root`, walking the message types to learn each segment's kind.
absl::Status AddQueryParam(const Descriptor* type, const std::string& name,
                           const std::string& value, Json* root) {
  const std::vector<std::string> path = absl::StrSplit(name, '.');
  Json* node = root;
  for (size_t i = 0; i < path.size(); ++i) {
    const FieldDescriptor* field = FindField(type, path[i]);
    if (field == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("the query parameter '", name, "' names no field of ", type->full_name()));
    }
    Json& slot = (*node)[field->name()];
    const bool last = i + 1 == path.size();
    if (field->is_map()) {
      if (i + 2 != path.size()) {
        return absl::InvalidArgumentError(absl::StrCat("the query parameter '", name, "' must be ",
                                                       field->name(), ".<key>=<value>"));
      }
      slot[path[i + 1]] = QueryValue(field->message_type()->map_value(), value);
      return absl::OkStatus();
    }
    if (field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE && !last) {
      type = field->message_type();
      node = &slot;
      continue;
    }
    if (!last) {
      return absl::InvalidArgumentError(
          absl::StrCat("the query parameter '", name, "': ", field->name(), " has no fields"));
    }
    if (field->is_repeated()) {
      slot.push_back(QueryValue(field, value));
    } else {
      slot = QueryValue(field, value);
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::optional<std::string> MatchPath(std::string_view pattern, std::string_view path) {
  const size_t open = pattern.find('{');
  if (open == std::string_view::npos) {
    if (pattern != path) return std::nullopt;
    return std::string();
  }
  const std::string_view prefix = pattern.substr(0, open);
  const std::string_view suffix = pattern.substr(pattern.find('}', open) + 1);
  if (path.size() <= prefix.size() + suffix.size() || path.substr(0, prefix.size()) != prefix ||
      path.substr(path.size() - suffix.size()) != suffix) {
    return std::nullopt;
  }
  const std::string_view value =
      path.substr(prefix.size(), path.size() - prefix.size() - suffix.size());
  if (value.find_first_of("/:") != std::string_view::npos) return std::nullopt;
  return std::string(value);
}

absl::Status ParseJsonBody(std::string_view body, Message* message, const std::string& what) {
  if (absl::StripAsciiWhitespace(absl::string_view(body.data(), body.size())).empty()) {
    return absl::OkStatus();
  }
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  const auto st = google::protobuf::util::JsonStringToMessage(
      google::protobuf::StringPiece(body.data(), body.size()), message, options);
  if (st.ok()) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(what, " is not a JSON ", message->GetDescriptor()->full_name(),
                   " (fields as in proto/tttserve/v1/ttt_service.proto, bytes fields in base64): ",
                   std::string(st.message())));
}

absl::Status ApplyQuery(const QueryParams& query, Message* message) {
  if (query.empty()) return absl::OkStatus();
  Json root = Json::object();
  for (const auto& [name, value] : query) {
    // (Also what the JSON printer below needs: it throws on other bytes.)
    if (!IsUtf8(name) || !IsUtf8(value)) {
      return absl::InvalidArgumentError(
          "the query parameters are not valid UTF-8 (percent-encode UTF-8 bytes only)");
    }
    absl::Status added = AddQueryParam(message->GetDescriptor(), name, value, &root);
    if (!added.ok()) return added;
  }
  std::unique_ptr<Message> fields(message->New());
  absl::Status parsed = ParseJsonBody(root.dump(), fields.get(), "the query parameters");
  if (!parsed.ok()) return parsed;
  message->MergeFrom(*fields);
  return absl::OkStatus();
}

absl::Status BindPathField(const std::string& field_name, const std::string& value,
                           Message* message) {
  const FieldDescriptor* field = message->GetDescriptor()->FindFieldByName(field_name);
  if (field == nullptr || field->cpp_type() != FieldDescriptor::CPPTYPE_STRING) {
    return absl::InternalError(
        absl::StrCat(message->GetDescriptor()->full_name(), " has no string field ", field_name));
  }
  if (!IsUtf8(value)) {
    return absl::InvalidArgumentError(absl::StrCat("the path's ", field_name,
                                                   " is not valid UTF-8 (ids are letters, digits, "
                                                   "'.', '_' and '-')"));
  }
  const google::protobuf::Reflection* reflection = message->GetReflection();
  const std::string body_value = reflection->GetString(*message, field);
  if (!body_value.empty() && body_value != value) {
    return absl::InvalidArgumentError(absl::StrCat("the path names ", field_name, " '", value,
                                                   "' and the body '", body_value,
                                                   "': leave it out of the body"));
  }
  reflection->SetString(message, field, value);
  return absl::OkStatus();
}

std::string ToJson(const Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.always_print_primitive_fields = true;
  options.preserve_proto_field_names = true;
  std::string json;
  const auto st = google::protobuf::util::MessageToJsonString(message, &json, options);
  if (!st.ok()) {  // only an Any of an unknown type; the service sends none
    return Json{{"error", absl::StrCat("cannot print ", message.GetDescriptor()->full_name(),
                                       " as JSON: ", std::string(st.message()))}}
        .dump();
  }
  return json;
}

std::string StatusJson(const grpc::Status& status) {
  google::rpc::Status details;
  if (!status.error_details().empty() && details.ParseFromString(status.error_details())) {
    return ToJson(details);
  }
  // A refusal of this layer, or one gRPC makes itself (a message over its size limit): the
  // code's name as the reason, as the service's untagged refusals have (server/status.h).
  return StatusJson(
      LayerStatus(status.error_code(), status.error_message(), CodeName(status.error_code())));
}

grpc::Status LayerStatus(grpc::StatusCode code, std::string message, std::string reason) {
  google::rpc::Status details;
  details.set_code(code);
  details.set_message(message);
  google::rpc::ErrorInfo info;
  info.set_reason(std::move(reason));
  info.set_domain(util::kErrorDomain);
  details.add_details()->PackFrom(info);
  return grpc::Status(code, std::move(message), details.SerializeAsString());
}

}  // namespace ttt::http::internal
