// engine/internal/chunk_scan.cc, the Gram form of a segment's chunk updates, against the rule
// written the direct way (one [d_model, d_ff] update, sum, clip and cap per chunk: the form the
// engine ran before) on random inputs: the same terms and final delta to float rounding, for
// every block size, with and without pending rows, a trailing unfinished chunk, the clip and the
// cap (both made to bind).
#include "engine/internal/chunk_scan.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace ttt::engine::internal {
namespace {

constexpr int64_t kChunk = 4, kModel = 12, kFf = 20;

struct Segment {
  at::Tensor term, delta;
};

// The direct rule: chunk j's rows read D_j, then D_{j+1} = cap(D_j + eta * clip(V_j^T Z_j)).
Segment DirectSegment(at::Tensor delta, const at::Tensor& z, const at::Tensor& targets,
                      int64_t pending, const FoldParams& p) {
  const int64_t rows = z.size(0), complete = targets.size(0);
  std::vector<at::Tensor> terms;
  for (int64_t j = 0; j <= complete; ++j) {
    const int64_t first = std::max(j * kChunk, pending);
    const int64_t last = j == complete ? rows : (j + 1) * kChunk;
    if (first < last) terms.push_back(at::mm(z.slice(0, first, last), delta.t()));
    if (j == complete) break;
    at::Tensor update = at::mm(targets[j].t(), z.slice(0, j * kChunk, (j + 1) * kChunk));
    if (p.clip > 0) update = update * at::clamp_max(p.clip / (update.norm() + 1e-12), 1.0);
    delta = delta + update * p.eta;
    if (p.cap > 0) delta = delta * at::clamp_max(p.cap / (delta.norm() + 1e-12), 1.0);
  }
  return {at::cat(terms, 0), delta};
}

double MaxGap(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).abs().max().item<double>() / (1 + b.abs().max().item<double>());
}

struct Inputs {
  at::Tensor delta, z, targets;
};

Inputs RandomInputs(int64_t rows, uint64_t seed) {
  at::manual_seed(seed);
  return {at::randn({kModel, kFf}) * 0.2, at::randn({rows, kFf}) * 0.5,
          at::randn({rows / kChunk, kChunk, kModel}) * 0.5};
}

struct Limits {
  std::string name;
  FoldParams params;
};

const std::vector<Limits>& AllLimits() {
  static const std::vector<Limits> limits = {
      {"no clip, no cap", {.eta = 0.7}},
      {"clip", {.eta = 0.7, .clip = 1.0}},
      {"cap", {.eta = 0.7, .cap = 2.0}},
      {"clip and cap", {.eta = 0.7, .clip = 1.0, .cap = 2.0}},
  };
  return limits;
}

TEST(ChunkScanTest, EqualsTheDirectRuleForEveryBlockSizeAndLimit) {
  for (const Limits& limits : AllLimits()) {
    for (int64_t pending : {0, 3}) {
      for (int64_t rows : {36, 37}) {  // nine whole chunks, then one more row
        const Inputs in = RandomInputs(rows, 7 + rows + pending);
        const Segment direct = DirectSegment(in.delta, in.z, in.targets, pending, limits.params);
        for (int64_t block : {1, 4, 8, 12, 64}) {
          const std::string where = limits.name + ", pending " + std::to_string(pending) +
                                    ", rows " + std::to_string(rows) + ", block " +
                                    std::to_string(block);
          at::Tensor delta = in.delta.clone();
          const at::Tensor term = DenseSegmentTerms(delta, in.z, in.targets, pending, kChunk,
                                                    limits.params, /*in_place=*/true, block);
          ASSERT_EQ(term.sizes(), direct.term.sizes()) << where;
          EXPECT_LT(MaxGap(term, direct.term), 2e-6) << where;
          EXPECT_LT(MaxGap(delta, direct.delta), 2e-6) << where;
        }
      }
    }
  }
}

// Off the CPU float path (another device; here: doubles) the inner products are tensor
// operations: the same rule.
TEST(ChunkScanTest, TheTensorFormOfTheInnerProductsAgrees) {
  const Inputs in = RandomInputs(37, 5);
  const FoldParams& p = AllLimits()[3].params;
  const Segment direct = DirectSegment(in.delta.to(at::kDouble), in.z.to(at::kDouble),
                                       in.targets.to(at::kDouble), 3, p);
  at::Tensor delta = in.delta.to(at::kDouble);
  const at::Tensor term =
      DenseSegmentTerms(delta, in.z.to(at::kDouble), in.targets.to(at::kDouble), 3, kChunk, p,
                        /*in_place=*/true, 8);
  EXPECT_LT(MaxGap(term, direct.term), 1e-6);
  EXPECT_LT(MaxGap(delta, direct.delta), 1e-6);
}

TEST(ChunkScanTest, TheLimitsBindOnTheseInputs) {
  const Inputs in = RandomInputs(36, 3);
  const Segment free = DirectSegment(in.delta, in.z, in.targets, 0, AllLimits()[0].params);
  for (size_t i = 1; i < AllLimits().size(); ++i) {
    const FoldParams& p = AllLimits()[i].params;
    const Segment limited = DirectSegment(in.delta, in.z, in.targets, 0, p);
    EXPECT_GT(MaxGap(limited.term, free.term), 1e-2) << AllLimits()[i].name;
    if (p.cap > 0) {
      EXPECT_NEAR(limited.delta.norm().item<double>(), p.cap, 1e-4) << AllLimits()[i].name;
    }
  }
}

TEST(ChunkScanTest, OutOfPlaceLeavesTheCallersDeltaAlone) {
  const Inputs in = RandomInputs(20, 11);
  const at::Tensor before = in.delta.clone();
  at::Tensor delta = in.delta;
  DenseSegmentTerms(delta, in.z, in.targets, 2, kChunk, AllLimits()[3].params,
                    /*in_place=*/false, 8);
  EXPECT_TRUE(at::equal(in.delta, before)) << "the shared tensor must not change";
  EXPECT_FALSE(at::equal(delta, before)) << "the slot gets the folded delta";
}

TEST(ChunkScanTest, ASegmentInsideItsChunkOnlyReadsTheDelta) {
  const Inputs in = RandomInputs(3, 13);
  at::Tensor delta = in.delta.clone();
  const at::Tensor term = DenseSegmentTerms(delta, in.z, in.z.new_empty({0, kChunk, kModel}), 1,
                                            kChunk, AllLimits()[3].params, /*in_place=*/true);
  EXPECT_TRUE(at::equal(delta, in.delta));
  EXPECT_LT(MaxGap(term, at::mm(in.z.slice(0, 1), in.delta.t())), 1e-7);
}

}  // namespace
}  // namespace ttt::engine::internal
