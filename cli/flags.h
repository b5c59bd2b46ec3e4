// The ttt client's flags (defined in flags.cc): common ones, then per subcommand.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/flags/declare.h"

ABSL_DECLARE_FLAG(std::string, address);
ABSL_DECLARE_FLAG(std::string, output);
ABSL_DECLARE_FLAG(std::string, tenant);
ABSL_DECLARE_FLAG(bool, tls);
ABSL_DECLARE_FLAG(std::string, ca_file);
ABSL_DECLARE_FLAG(std::string, cert_file);
ABSL_DECLARE_FLAG(std::string, key_file);
ABSL_DECLARE_FLAG(std::string, token);
ABSL_DECLARE_FLAG(double, timeout_s);
ABSL_DECLARE_FLAG(std::string, text);
ABSL_DECLARE_FLAG(std::string, tokens);
ABSL_DECLARE_FLAG(bool, token_file);
ABSL_DECLARE_FLAG(bool, end_of_document);
ABSL_DECLARE_FLAG(int64_t, message_tokens);
ABSL_DECLARE_FLAG(int64_t, message_bytes);
ABSL_DECLARE_FLAG(bool, reset_at_document_end);
ABSL_DECLARE_FLAG(std::string, labels);
ABSL_DECLARE_FLAG(int64_t, idle_ttl_s);
ABSL_DECLARE_FLAG(std::string, id);
ABSL_DECLARE_FLAG(int32_t, max_tokens);
ABSL_DECLARE_FLAG(double, temperature);
ABSL_DECLARE_FLAG(int32_t, top_k);
ABSL_DECLARE_FLAG(double, top_p);
ABSL_DECLARE_FLAG(uint64_t, seed);
ABSL_DECLARE_FLAG(std::vector<std::string>, stop);
ABSL_DECLARE_FLAG(bool, commit);
ABSL_DECLARE_FLAG(bool, ignore_eos);
ABSL_DECLARE_FLAG(std::string, checkpoint_id);
ABSL_DECLARE_FLAG(std::string, session);
ABSL_DECLARE_FLAG(std::string, out);
ABSL_DECLARE_FLAG(std::string, service);
ABSL_DECLARE_FLAG(int64_t, doc_tokens);
ABSL_DECLARE_FLAG(int64_t, baseline);
ABSL_DECLARE_FLAG(std::string, mix);
ABSL_DECLARE_FLAG(bool, parse_special_tokens);
ABSL_DECLARE_FLAG(std::string, add_bos);
ABSL_DECLARE_FLAG(std::string, protocol);
ABSL_DECLARE_FLAG(std::string, http_address);
ABSL_DECLARE_FLAG(int64_t, background_ingest_tokens);
