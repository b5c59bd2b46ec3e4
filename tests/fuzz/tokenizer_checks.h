// Invariants every tokenizer must keep whatever the input, shared by the tokenizer fuzz targets:
// ids inside the vocabulary, decoded text always valid UTF-8, streaming decoding equal to
// whole-text decoding (tokenizer.h's StreamDecoder contract).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "tests/fuzz/fuzz_check.h"
#include "tokenizer/tokenizer.h"

namespace ttt::fuzz {

// Decodes `ids` whole and one by one; checks both are valid UTF-8 and, when the tokens' bytes
// form valid UTF-8, agree (the StreamDecoder contract: where bytes are not UTF-8, Decode
// replaces them as its library does, e.g. SentencePiece one U+FFFD per byte, while streaming
// replaces each maximal invalid sequence once), and no token without bytes interrupts a
// character. Returns the text.
inline std::string CheckDecode(const tokenizer::Tokenizer& tok, const std::vector<int32_t>& ids) {
  const std::string text = tok.Decode(ids);
  FUZZ_CHECK(tokenizer::ValidateUtf8(text).ok(), "Decode gave invalid UTF-8 (%zu bytes)",
             text.size());
  tokenizer::StreamDecoder stream(tok);
  std::string streamed, raw;
  bool at_text_start = true;
  // A token without bytes (a control or unknown id) inside an unfinished character: SentencePiece's
  // Decode ends the byte run there and replaces its bytes, streaming joins them (tokenizer.h).
  bool interrupted_character = false;
  for (int32_t id : ids) {
    streamed += stream.Push(id);
    const std::string bytes = tok.TokenBytes(id, &at_text_start);
    if (bytes.empty() && !tokenizer::ValidateUtf8(raw).ok()) interrupted_character = true;
    raw += bytes;
  }
  streamed += stream.Flush();
  FUZZ_CHECK(tokenizer::ValidateUtf8(streamed).ok(), "streaming gave invalid UTF-8 (%zu bytes)",
             streamed.size());
  if (tokenizer::ValidateUtf8(raw).ok() && !interrupted_character) {
    FUZZ_CHECK(streamed == text, "streamed decoding (%zu bytes) differs from Decode (%zu bytes)",
               streamed.size(), text.size());
  }
  return text;
}

// Encodes `text`: INVALID_ARGUMENT exactly when it is not valid UTF-8; otherwise ids inside the
// vocabulary, which decode consistently. Returns the ids (empty when refused).
inline std::vector<int32_t> CheckEncode(const tokenizer::Tokenizer& tok, std::string_view text) {
  auto ids = tok.Encode(text);
  if (!tokenizer::ValidateUtf8(text).ok()) {
    FUZZ_CHECK(!ids.ok() && ids.status().code() == absl::StatusCode::kInvalidArgument,
               "invalid UTF-8 not refused: %s", ids.status().ToString().c_str());
    return {};
  }
  FUZZ_CHECK(ids.ok(), "valid UTF-8 refused: %s", ids.status().ToString().c_str());
  for (int32_t id : *ids) {
    FUZZ_CHECK(id >= 0 && id < tok.vocab_size(), "id %d outside [0, %d)", id, tok.vocab_size());
  }
  CheckDecode(tok, *ids);
  return *std::move(ids);
}

// Ids from raw bytes (2 bytes each), spread a little past both ends of the vocabulary so that
// Decode's handling of unknown ids is exercised too.
inline std::vector<int32_t> IdsFromBytes(const uint8_t* data, size_t size, int32_t vocab) {
  std::vector<int32_t> ids;
  for (size_t i = 0; i + 1 < size; i += 2) {
    const int32_t v = static_cast<int32_t>(data[i] | (data[i + 1] << 8));
    ids.push_back(v % (vocab + 8) - 4);
  }
  return ids;
}

}  // namespace ttt::fuzz
