// The memory report of ttt-eval --mode=memory (issue 28): on one split (validation for choosing
// between models, test once per shipped model) of each corpus given, for each model variant, the
// carry-over into a document from unrelated and from related documents read before it, and the
// memory curve (re-reading a document's start after k of its tokens and after all of them), as a
// markdown report with the issue-28 goals checked for the first variant.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "train/common.h"
#include "train/eval_lib.h"

namespace ttt::train {

struct NamedCorpus {
  std::string name;  // e.g. "Brown, validation"
  Corpus corpus;
};

struct MemoryReportOptions {
  std::vector<std::pair<std::string, VariantSpec>> variants;  // label, model; [0] is checked
  std::vector<NamedCorpus> corpora;  // two or more: each is the others' unrelated text
  std::string split;                 // "validation" or "test", for the report's wording
  std::vector<int64_t> distances = {512, 2048, 3300, 6000, 8000};
  int64_t length = 512;      // tokens re-read
  int64_t before = 2;        // documents read before a carry-over target
  int64_t after_others = 2;  // unrelated documents read between a document and its last re-read
  int64_t max_docs = 0;      // documents per corpus (0 = all)
  int64_t piece = 256;
  // Carry-over again with the fast weights faded to each of these fractions at every document
  // end (Model::FadeFastWeights, a session with fade_at_document_end = 1 - the fraction); first
  // variant only.
  std::vector<double> fade_keeps;
  std::string command;  // recorded in the report
  // Where each (variant, corpus)'s measures are kept, keyed by everything they depend on, so that
  // a stopped report resumes where it was (empty = no cache).
  std::filesystem::path cache_dir;
};

// Measures every variant on every corpus and returns the report (progress goes to stdout).
// INVALID_ARGUMENT with fewer than two corpora; the measures' and loading's errors as they come.
absl::StatusOr<std::string> MemoryReport(const MemoryReportOptions& options);

}  // namespace ttt::train
