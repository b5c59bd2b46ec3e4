// The text side of a Generate stream, apart from its transport: generated token ids decoded into
// UTF-8 as they come, held back where the text could still become the start of a stop string,
// and cut at the first stop string that matches. The reactor sends what Push() and Finish()
// return and stops the generation once stopped().
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "tokenizer/tokenizer.h"

namespace ttt::server::core {

// Thread-compatible: one per stream; the reactor calls it under its mutex (from the engine
// thread, which needs stopped() at once to end the generation on the token that matched).
class GenerationText {
 public:
  // `stops`: strings that end the text where they first occur (not sent themselves); their
  // bounds are the server edge's (ValidateStops). FAILED_PRECONDITION when there are stops but no
  // tokenizer to produce text. REQUIRES: `tokenizer`, when not null, outlives the object.
  static absl::StatusOr<std::unique_ptr<GenerationText>> Create(
      const tokenizer::Tokenizer* tokenizer, std::vector<std::string> stops);

  // Whether there is text at all (a tokenizer); without one Push and Finish return "".
  bool has_text() const { return decoder_ != nullptr; }

  // The text that may be sent after generated token `token`: complete characters, up to a
  // matched stop string, and otherwise short of what could still become the start of one.
  std::string Push(int32_t token);

  // The rest of the text once the generation ended (characters left incomplete become U+FFFD);
  // "" after a stop string matched.
  std::string Finish();

  // Whether a stop string matched: the generation should end (finish reason STOP).
  bool stopped() const { return stopped_; }

 private:
  GenerationText(const tokenizer::Tokenizer* tokenizer, std::vector<std::string> stops);

  // The part of text_ past emitted_ that may be sent now; `final` sends what is held back.
  std::string Take(bool final);

  std::unique_ptr<tokenizer::StreamDecoder> decoder_;  // null without a tokenizer
  const std::vector<std::string> stops_;
  size_t max_stop_ = 0;  // bytes of the longest stop string
  std::string text_;     // decoded output so far
  size_t emitted_ = 0;   // bytes of text_ already returned
  bool stopped_ = false;
};

}  // namespace ttt::server::core
