// Test helper: a tiny byte-level BPE tokenizer.json whose ids are easy to reason about, for the
// tests that need text (the server's text input, the Ingest and Generate text protocols).
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include "tokenizer/tokenizer.h"

namespace ttt::testing {

// Writes `dir`/tokenizer.json (the folder must exist): GPT-2's byte-level BPE over the 94
// printable ASCII bytes (ids 0..93 for '!'..'~' in byte order), space (94), newline (95), and
// "é" (96, the bytes C3 A9 by the one merge): the 97 ids of the golden fixtures' vocabulary. The
// other 161 bytes follow from id 97 on (past those models' vocabulary). Not SentencePiece:
// Debian's libsentencepiece carries its own protobuf 3.14 and cannot share a process with
// libprotobuf 3.21 (gRPC, LibTorch). `added_tokens`: tokenizer.json's added_tokens (a JSON
// array), for tests that need special tokens.
void WriteByteLevelTokenizer(const std::filesystem::path& dir,
                             const std::string& added_tokens = "[]");

// That tokenizer, loaded (written to a temporary folder that is removed again). Aborts the
// test binary when it does not load: every test that asks for it would fail anyway.
std::unique_ptr<tokenizer::Tokenizer> LoadByteLevelTokenizer();

// The id of the one-byte token `byte` in that tokenizer (any byte: a lone byte of a multi-byte
// character has its own id too).
int ByteLevelId(char byte);

}  // namespace ttt::testing
