// One thread that starts the streaming reactors' writes handed over by the engine thread.
//
// A write started on the engine thread (a Generate stream's token, right after the step that
// produced it) runs gRPC's transport work there: the call's combiner, framing, the sendmsg, the
// wake-ups of gRPC's threads. Measured at 16 decoding sessions (bench/RESULTS.md, "What the
// server adds to decoding"), that was ~8 % of the engine thread's time. Handing the start to this
// thread keeps the engine thread on the model; gRPC's OnWriteDone still starts the next write on
// gRPC's own threads.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>

#include "absl/base/thread_annotations.h"

namespace ttt::server::internal {

// Thread-safe. One per process, never destroyed (its thread runs until exit).
class WriteStarter {
 public:
  static WriteStarter& Get();

  // Runs `start` on the starter's thread, in the order posted. `start` must keep what it touches
  // alive itself (a reactor counts it as a due callback: reactor_lifetime.h).
  void Post(std::function<void()> start);

 private:
  WriteStarter();
  void Loop();

  std::mutex mu_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool idle_ ABSL_GUARDED_BY(mu_) = false;  // the thread waits on wake_
};

}  // namespace ttt::server::internal
