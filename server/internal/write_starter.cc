#include "server/internal/write_starter.h"

#include <thread>
#include <utility>

namespace ttt::server::internal {

WriteStarter& WriteStarter::Get() {
  static WriteStarter* const starter = new WriteStarter;  // never destroyed: its thread runs on
  return *starter;
}

WriteStarter::WriteStarter() {
  std::thread([this] { Loop(); }).detach();
}

void WriteStarter::Post(std::function<void()> start) {
  bool wake;
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(std::move(start));
    wake = idle_;  // a step's burst of tokens wakes the thread once
    idle_ = false;
  }
  if (wake) wake_.notify_one();
}

void WriteStarter::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    while (queue_.empty()) {
      idle_ = true;
      wake_.wait(lock);
    }
    std::deque<std::function<void()>> batch;
    batch.swap(queue_);
    lock.unlock();
    for (std::function<void()>& start : batch) start();
    lock.lock();
  }
}

}  // namespace ttt::server::internal
