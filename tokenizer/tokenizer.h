// Text <-> token ids for the models ttt-serve loads from a Hugging Face folder: byte-level BPE
// from `tokenizer.json` (GPT-2, Llama-3, Qwen2 families) or SentencePiece from `tokenizer.model`
// (Llama-2 style), plus the UTF-8 validation the server applies to incoming text and a
// StreamDecoder that turns generated tokens into text one token at a time.
// No LibTorch, no gRPC: the server and the tools link this alone.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace ttt::tokenizer {

// OK when `text` is well-formed UTF-8 (RFC 3629: no overlong forms, no surrogates, nothing above
// U+10FFFF, no truncated sequence); otherwise INVALID_ARGUMENT naming the byte offset of the
// first bad sequence ("invalid UTF-8 at byte offset 7").
absl::Status ValidateUtf8(std::string_view text);

// How many bytes (0..3) at the end of `text` begin a character that it cuts off: the valid start
// of a UTF-8 sequence that more bytes could still complete. 0 when `text` ends on a character
// boundary, and when its last bytes could not become valid whatever follows (ValidateUtf8 names
// those). Lets a stream of text split anywhere be tokenized up to its last whole character.
size_t IncompleteUtf8Tail(std::string_view text);

// Whether special tokens written in a text (e.g. "<|im_start|>" in a chat template) become their
// single id. Text from users should be encoded kAsText, so that nobody can forge the control
// tokens of a conversation by typing them.
enum class SpecialTokens {
  kParse,   // become their id: Hugging Face tokenizers' default (and this module's Encode(text))
  kAsText,  // encoded as the characters they are written with, as tokenizers does when its
            // encode_special_tokens is set: where an added token marked "special" matches, its
            // text stays plain text (other added tokens still become their id). SentencePiece
            // never parses its control tokens, so both modes give the same ids there.
};

// A loaded tokenizer. Immutable after Load and thread-safe: every method may be called
// concurrently from any thread.
class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Loads what a Hugging Face model folder has. `tokenizer.json` wins when it describes
  // byte-level BPE; a `tokenizer.json` of another kind (e.g. Llama-2's SentencePiece-converted
  // BPE) defers to `tokenizer.model`. bos/eos names come from `tokenizer_config.json` when present.
  // Errors: NOT_FOUND when the folder has neither file; INVALID_ARGUMENT naming the file when it
  // is malformed; UNIMPLEMENTED naming the file when it uses a feature this module lacks (an
  // unsupported normalizer or pre-tokenizer) and there is no `tokenizer.model` to fall back to.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::filesystem::path& model_dir);

  // The ids of `text`, without bos/eos (callers add those; see bos_id()). `special` says whether
  // special tokens written in the text become their single id (see SpecialTokens).
  // INVALID_ARGUMENT when `text` is not valid UTF-8 (the message names the byte offset).
  virtual absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text,
                                                      SpecialTokens special) const = 0;
  // Encode(text, SpecialTokens::kParse): for trusted text such as a chat template's output.
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text) const {
    return Encode(text, SpecialTokens::kParse);
  }

  // The text of `ids`. Special tokens render as their content for byte-level BPE and as nothing
  // for SentencePiece control tokens (each library's default). Ids outside [0, vocab_size())
  // are skipped; byte sequences that are not valid UTF-8 become U+FFFD.
  virtual std::string Decode(absl::Span<const int32_t> ids) const = 0;

  // Incremental decoding, the primitive under StreamDecoder: the raw bytes token `id` adds to
  // the text so far. `*at_text_start` is true at a text's start, where SentencePiece drops a
  // piece's leading space as libsentencepiece does: once when the model only adds a dummy prefix
  // (["▁", "▁the"] decodes to " the"), for every piece until the text is non-empty when it also
  // removes extra whitespace (["▁", "▁the"] decodes to "the"); [bos, "▁the"] decodes to "the".
  // The call clears it once the start is over. The bytes may begin or end inside a multi-byte
  // UTF-8 character; StreamDecoder reassembles them. Empty for unknown ids and control tokens.
  virtual std::string TokenBytes(int32_t id, bool* at_text_start) const = 0;

  // One past the largest id (the model's embedding rows may be more).
  virtual int32_t vocab_size() const = 0;
  virtual std::optional<int32_t> bos_id() const = 0;
  virtual std::optional<int32_t> eos_id() const = 0;

  // Whether the model's tokenizer files put bos before a text, i.e. what Hugging Face's
  // tokenizer does by default: tokenizer_config.json's add_bos_token when it says, else whether
  // tokenizer.json's post-processor template starts with the bos token (Llama 3's does);
  // false without either (libsentencepiece's default) and whenever there is no bos token.
  // Encode never adds it: callers do, where a text starts a sequence (docs/contract.md).
  bool adds_bos() const { return adds_bos_; }

 private:
  bool adds_bos_ = false;  // set once by Load
};

// The Unicode version the tokenizer's normalizers and character classes follow ("15.0.0": that
// of Debian's utf8proc), for clients comparing ids with another tokenizer.
std::string UnicodeVersion();

// Streaming detokenization for generation: Push() each generated token and send what it
// returns. The concatenation of all Push() results followed by Flush() equals
// tokenizer.Decode(all ids) for valid UTF-8 output; a character split across tokens is held back
// until complete. One exception: where a token without text (a control or unknown id) falls
// inside a split character, SentencePiece's Decode ends the byte run there and replaces its
// bytes with U+FFFD, while streaming joins the bytes around it into the character.
// Thread-compatible (one per stream). REQUIRES: `tokenizer` outlives this.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer) : tokenizer_(tokenizer) {}

  // The new complete UTF-8 text that `id` adds (often empty while a character is incomplete).
  // A byte sequence that can never become valid is emitted as U+FFFD at once.
  std::string Push(int32_t id);

  // Ends the text: returns U+FFFD for held-back bytes of an unfinished character (or "").
  // Later Push() calls continue the same text.
  std::string Flush();

  // Starts a new text: drops held-back bytes; the leading-space rule applies again.
  void Reset();

  // Bytes held back awaiting the rest of a character (at most 3).
  size_t pending_bytes() const { return pending_.size(); }

 private:
  const Tokenizer& tokenizer_;
  std::string pending_;        // an incomplete (so far valid) UTF-8 sequence
  bool at_text_start_ = true;  // see Tokenizer::TokenBytes
};

}  // namespace ttt::tokenizer
