#include "clients/bench/progress.h"

#include <algorithm>

#include "absl/strings/str_format.h"

namespace gsa::bench {
namespace {

using Clock = std::chrono::steady_clock;

constexpr int kBarWidth = 30;
constexpr auto kRedrawInterval = std::chrono::milliseconds(100);

}  // namespace

ProgressMode ResolveProgressMode(ProgressMode mode, bool stderr_is_tty) {
  if (mode != ProgressMode::kAuto) return mode;
  return stderr_is_tty ? ProgressMode::kBar : ProgressMode::kLines;
}

std::string RenderProgressBar(int64_t done, int64_t failed, int64_t total, double elapsed_s,
                              int width) {
  const double frac = total > 0 ? std::clamp(static_cast<double>(done) / total, 0.0, 1.0) : 1.0;
  const int filled = static_cast<int>(frac * width);
  std::string bar(static_cast<size_t>(filled), '#');
  bar.append(static_cast<size_t>(width - filled), '.');
  const double rate = elapsed_s > 0.0 ? static_cast<double>(done) / elapsed_s : 0.0;
  return absl::StrFormat("[%s] %d/%d  ok %d  failed %d  %.1f req/s  %.1f s", bar, done, total,
                         done - failed, failed, rate, elapsed_s);
}

ProgressReporter::ProgressReporter(std::ostream& out, ProgressMode mode, int64_t total,
                                   std::string label)
    : out_(out), mode_(mode), total_(total), label_(std::move(label)), start_(Clock::now()),
      last_draw_(start_ - kRedrawInterval) {}

void ProgressReporter::OnRequestDone(bool ok) {
  std::lock_guard<std::mutex> lock(mu_);
  ++done_;
  if (!ok) ++failed_;
  DrawLocked(false);
}

void ProgressReporter::Finish() {
  std::lock_guard<std::mutex> lock(mu_);
  if (finished_) return;
  finished_ = true;
  DrawLocked(true);
}

void ProgressReporter::DrawLocked(bool final_frame) {
  const Clock::time_point now = Clock::now();
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  switch (mode_) {
    case ProgressMode::kBar: {
      // Redraw at most every kRedrawInterval, always at 100%, and at the end unless the last
      // frame drawn is already the final state.
      const bool due = done_ == total_ || now - last_draw_ >= kRedrawInterval;
      if (final_frame ? done_ != last_drawn_done_ : due) {
        last_draw_ = now;
        last_drawn_done_ = done_;
        out_ << '\r' << label_ << ' '
             << RenderProgressBar(done_, failed_, total_, elapsed, kBarWidth)
             << "\x1b[K";  // clear what a longer previous frame left
      }
      if (final_frame) out_ << '\n';
      out_.flush();
      return;
    }
    case ProgressMode::kLines: {
      const int64_t decile = total_ > 0 ? done_ * 10 / total_ : 10;
      if (final_frame || decile <= last_decile_) return;  // the 100% line is drawn as it happens
      last_decile_ = decile;
      out_ << absl::StrFormat("%s: %d/%d requests done (%d failed), %.1f s\n", label_, done_,
                              total_, failed_, elapsed);
      out_.flush();
      return;
    }
    case ProgressMode::kAuto:
    case ProgressMode::kOff:
      return;
  }
}

}  // namespace gsa::bench
