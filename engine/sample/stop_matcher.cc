#include "engine/sample/stop_matcher.h"

#include <algorithm>
#include <utility>

namespace gsa {
namespace {

bool IsContinuationByte(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

// The character boundary at or before `pos`: steps back over continuation bytes, which would
// otherwise leave the start of a character on one side of the cut and its rest on the other.
size_t CharacterBoundaryAtOrBefore(std::string_view text, size_t pos) {
  while (pos > 0 && pos < text.size() && IsContinuationByte(text[pos])) --pos;
  return pos;
}

}  // namespace

StopMatcher::StopMatcher(std::vector<std::string> stop_strings) {
  for (std::string& s : stop_strings) {
    if (s.empty()) continue;
    max_stop_size_ = std::max(max_stop_size_, s.size());
    stops_.push_back(std::move(s));
  }
}

StopMatcher::Result StopMatcher::Push(std::string_view new_text) {
  if (stopped_) return Result{std::string(), true};
  held_.append(new_text);

  // The held text contained no complete stop string, so a match found now ends in `new_text`;
  // scanning all of held_ catches the ones that start in the held part. For one stop string the
  // first occurrence is also the one that ends first.
  size_t best_start = std::string::npos;
  size_t best_end = std::string::npos;
  for (const std::string& stop : stops_) {
    const size_t start = held_.find(stop);
    if (start == std::string::npos) continue;
    const size_t end = start + stop.size();
    if (end < best_end || (end == best_end && start < best_start)) {
      best_start = start;
      best_end = end;
    }
  }
  if (best_start != std::string::npos) {
    stopped_ = true;
    Result result{held_.substr(0, CharacterBoundaryAtOrBefore(held_, best_start)), true};
    held_.clear();
    return result;
  }

  // Hold back the longest suffix that a later piece could complete into a stop string.
  const std::string_view text(held_);
  size_t hold = 0;
  for (size_t n = std::min(text.size(), max_stop_size_ == 0 ? 0 : max_stop_size_ - 1); n > 0; --n) {
    const std::string_view suffix = text.substr(text.size() - n);
    const bool is_prefix = std::any_of(stops_.begin(), stops_.end(), [&](const std::string& s) {
      return std::string_view(s).starts_with(suffix);
    });
    if (is_prefix) {
      hold = n;
      break;
    }
  }
  const size_t cut = CharacterBoundaryAtOrBefore(text, text.size() - hold);
  Result result{held_.substr(0, cut), false};
  held_.erase(0, cut);
  return result;
}

std::string StopMatcher::Flush() {
  if (stopped_) return std::string();
  return std::exchange(held_, std::string());
}

}  // namespace gsa
