#include "engine/sched/request_stream.h"

namespace gsa {

const char* ToString(FinishReason r) {
  switch (r) {
    case FinishReason::kLength: return "length";
    case FinishReason::kStop: return "stop";
    case FinishReason::kEos: return "eos";
    case FinishReason::kCancelled: return "cancelled";
    case FinishReason::kError: return "error";
    default: return "none";
  }
}

void RequestStream::Push(GenerationDelta delta) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_pushed_) return;
    finished_pushed_ = delta.finished;
    queue_.push_back(std::move(delta));
  }
  cv_.notify_all();
}

std::optional<GenerationDelta> RequestStream::Next(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  if (finished_taken_) return std::nullopt;
  if (!cv_.wait_for(lock, timeout, [&] { return !queue_.empty(); })) return std::nullopt;
  GenerationDelta d = std::move(queue_.front());
  queue_.pop_front();
  if (d.finished) finished_taken_ = true;
  return d;
}

bool RequestStream::finished() const {
  std::lock_guard<std::mutex> lock(mu_);
  return finished_pushed_;
}

}  // namespace gsa
