// A bound on concurrent calls of one kind (imports, exports): a call takes a slot when it starts
// and gives it back when its reactor is destroyed; with every slot taken, the next call gets
// RESOURCE_EXHAUSTED at once instead of queueing its bytes in memory.
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "util/error_reason.h"

namespace ttt::server::internal {

// Thread-safe.
class CallSlots {
 public:
  // `what` names the calls and `flag` the limit in the refusal ("exports",
  // "--max_concurrent_exports").
  CallSlots(int64_t max, std::string what, std::string flag)
      : max_(max), what_(std::move(what)), flag_(std::move(flag)) {}

  // Takes a slot, or RESOURCE_EXHAUSTED naming the limit.
  absl::Status Acquire() {
    std::lock_guard<std::mutex> lock(mu_);
    if (in_use_ >= max_) {
      return util::WithReason(absl::ResourceExhaustedError(absl::StrCat(
                                  "too many concurrent ", what_, ": the limit is ", max_, " (",
                                  flag_, "); retry when one has finished")),
                              util::kReasonTooManyConcurrentCalls, {{"limit_flag", flag_}});
    }
    ++in_use_;
    return absl::OkStatus();
  }
  void Release() {
    std::lock_guard<std::mutex> lock(mu_);
    --in_use_;
  }
  int64_t in_use() const {
    std::lock_guard<std::mutex> lock(mu_);
    return in_use_;
  }

 private:
  const int64_t max_;
  const std::string what_;
  const std::string flag_;
  mutable std::mutex mu_;
  int64_t in_use_ = 0;  // guarded by mu_
};

// Holds one slot of `slots` while it lives (a reactor member); empty when Acquire failed.
class SlotLease {
 public:
  SlotLease() = default;
  SlotLease(const SlotLease&) = delete;
  SlotLease& operator=(const SlotLease&) = delete;
  ~SlotLease() {
    if (slots_ != nullptr) slots_->Release();
  }
  absl::Status Acquire(CallSlots* slots) {
    absl::Status st = slots->Acquire();
    if (st.ok()) slots_ = slots;
    return st;
  }

 private:
  CallSlots* slots_ = nullptr;
};

}  // namespace ttt::server::internal
