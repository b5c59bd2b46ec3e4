// The ttt client's flags (see flags.h).
#include "cli/flags.h"

#include "absl/flags/flag.h"

ABSL_FLAG(std::string, address, "",
          "ttt-serve gRPC address (empty: the TTT_ADDRESS environment variable, else "
          "localhost:50051)");
ABSL_FLAG(std::string, output, "text",
          "text, or json: each command's result as one JSON object on stdout (diagnostics stay "
          "on stderr)");
ABSL_FLAG(std::string, tenant, "", "tenant (sent as x-tenant-id; empty = server default)");
ABSL_FLAG(bool, tls, false, "connect with TLS (implied by --ca_file, --cert_file)");
ABSL_FLAG(std::string, ca_file, "",
          "PEM roots that sign the server's certificate (TLS; empty: the TTT_CA_FILE environment "
          "variable, else the system's roots)");
ABSL_FLAG(std::string, cert_file, "", "PEM client certificate for mutual TLS (with --key_file)");
ABSL_FLAG(std::string, key_file, "", "PEM private key of --cert_file");
ABSL_FLAG(std::string, token, "",
          "bearer token sent on every call (prefer TTT_TOKEN from the environment: a flag "
          "shows in ps)");
ABSL_FLAG(double, timeout_s, 600, "deadline of each call in seconds");
ABSL_FLAG(std::string, text, "", "text input (score, generate prompt)");
ABSL_FLAG(bool, parse_special_tokens, false,
          "ingest/generate/score: special tokens written in the text become their id (default: "
          "encoded as plain text; docs/contract.md, \"Text: special tokens and bos\")");
ABSL_FLAG(std::string, add_bos, "",
          "ingest/generate/score: true or false: the bos token before text that starts a "
          "session's context (empty = as the model's tokenizer files say)");
ABSL_FLAG(std::string, tokens, "", "token ids input, separated by spaces or commas");
ABSL_FLAG(bool, token_file, false, "ingest: FILE holds token ids (whitespace separated), not text");
ABSL_FLAG(bool, end_of_document, true, "ingest: mark the end of a document after the file");
ABSL_FLAG(int64_t, message_tokens, 512, "ingest: token ids per message");
ABSL_FLAG(int64_t, message_bytes, 65536, "ingest: text bytes per message (split at newlines)");
ABSL_FLAG(bool, reset_at_document_end, false, "create: reset fast weights at document ends");
ABSL_FLAG(double, fade_at_document_end, 0,
          "create: fraction of the fast weights forgotten at each document end (0..1; the "
          "context stays)");
ABSL_FLAG(std::string, labels, "", "create/list: labels k=v,k2=v2");
ABSL_FLAG(int64_t, idle_ttl_s, 0, "create: idle TTL in seconds (0 = server default)");
ABSL_FLAG(std::string, id, "",
          "create/fork/restore/import: the id of the session to create (the proxy's x-session-id "
          "routing key; empty = the server picks one)");
ABSL_FLAG(int32_t, max_tokens, 64, "generate: tokens to generate");
ABSL_FLAG(double, temperature, 1.0, "generate: temperature (0 = greedy)");
ABSL_FLAG(int32_t, top_k, 0, "generate: top-k (0 = all)");
ABSL_FLAG(double, top_p, 1.0, "generate: nucleus mass");
ABSL_FLAG(uint64_t, seed, 0, "generate: random seed");
ABSL_FLAG(std::vector<std::string>, stop, {}, "generate: stop strings (comma separated)");
ABSL_FLAG(bool, commit, false, "generate: append prompt and output to the session");
ABSL_FLAG(bool, ignore_eos, false, "generate: keep going past the eos token");
ABSL_FLAG(std::string, checkpoint_id, "", "checkpoint id (checkpoint, export)");
ABSL_FLAG(std::string, session, "", "restore: restore over this session instead of a new one");
ABSL_FLAG(std::string, out, "", "export: output file");
ABSL_FLAG(std::string, service, "", "health: service name (\"\" = whole server)");
ABSL_FLAG(int64_t, doc_tokens, 1024, "loadgen: tokens each session ingests");
ABSL_FLAG(int64_t, baseline, 1,
          "loadgen: sessions at a time in the baseline run (which serves as many sessions as N)");
ABSL_FLAG(std::string, protocol, "grpc",
          "loadgen: how sessions generate: grpc (Generate) or http (the OpenAI-compatible "
          "POST /v1/completions with server-sent events at --http_address; sessions are still "
          "created and ingested over gRPC)");
ABSL_FLAG(std::string, http_address, "127.0.0.1:8080",
          "loadgen --protocol=http: the server's --http_listen address (plaintext)");
ABSL_FLAG(
    std::string, mix, "default",
    "loadgen: default (--doc_tokens, --max_tokens), decode (decode-heavy: each session "
    "ingests 256 and generates 128) or shared_document (the N sessions read one document of "
    "--doc_tokens, the first alone, then diverge: each ingests 256 tokens of its own and "
    "generates --max_tokens; with ttt-serve --state_cache_mb the later reads are cache hits)");
ABSL_FLAG(std::string, measure, "all",
          "loadgen: all (each session's whole life is timed) or decode (every session ingests "
          "first; then only the generation, all sessions at once and greedy, is timed: the "
          "server's decode tokens/s, for bench/server_overhead.sh against engine_bench)");
ABSL_FLAG(int64_t, background_ingest_tokens, 0,
          "loadgen: > 0 compares the N sessions alone with the N sessions while one more "
          "session ingests this many tokens (inter-token latency under a long ingest)");
