// ttt-tokenize: text -> token ids with a model folder's own tokenizer (tokenizer.json or
// tokenizer.model, as the server loads it), one document a line in and out: the input format of
// ttt-train and ttt-eval (--train_tokens, --valid_tokens). The step that turns a user's text
// into training data for their own Hugging Face model (docs/model.md, "Bring your own model").
//
//   ttt-tokenize --model=path/to/hf-model < train.txt > train.tok
//
// Special tokens written in the text stay text (SpecialTokens::kAsText, as the server encodes
// users' text); no bos/eos is added (the trainer places document boundaries itself). Empty lines
// are skipped. Prints a summary (documents, tokens) on stderr.
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "tokenizer/tokenizer.h"
#include "util/status_macros.h"

ABSL_FLAG(std::string, model, "models/ttt-brown",
          "the model folder whose tokenizer.json or tokenizer.model encodes the text");

namespace ttt::train {
namespace {

absl::Status Run() {
  ASSIGN_OR_RETURN(auto tokenizer, tokenizer::Tokenizer::Load(absl::GetFlag(FLAGS_model)));
  int64_t documents = 0, tokens = 0, line_number = 0;
  std::string line;
  while (std::getline(std::cin, line)) {
    ++line_number;
    if (line.empty()) continue;
    auto ids = tokenizer->Encode(line, tokenizer::SpecialTokens::kAsText);
    if (!ids.ok()) {
      return absl::Status(ids.status().code(),
                          absl::StrCat("line ", line_number, ": ", ids.status().message()));
    }
    if (ids->empty()) continue;
    std::cout << absl::StrJoin(*ids, " ") << '\n';
    ++documents;
    tokens += static_cast<int64_t>(ids->size());
  }
  std::cout.flush();
  if (!std::cout) return absl::DataLossError("writing the token ids failed");
  std::fprintf(stderr, "ttt-tokenize: %lld documents, %lld tokens (vocab %d)\n",
               static_cast<long long>(documents), static_cast<long long>(tokens),
               tokenizer->vocab_size());
  return absl::OkStatus();
}

}  // namespace
}  // namespace ttt::train

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "ttt-tokenize --model=DIR < text > ids: one document a line, in the model's own tokens");
  absl::ParseCommandLine(argc, argv);
  std::ios::sync_with_stdio(false);
  absl::Status s = ttt::train::Run();
  if (!s.ok()) {
    std::fprintf(stderr, "ttt-tokenize: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
