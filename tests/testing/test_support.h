// Shared test fixtures: temporary directories, paths to the golden cases, small file helpers.
#pragma once

#include <string>
#include <string_view>

namespace gsa::testing {

// A fresh directory under the system temp dir, removed (recursively) on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string File(std::string_view name) const { return path_ + "/" + std::string(name); }

 private:
  std::string path_;
};

// tests/data/golden/<name> (copied from ../shared/golden so the tests run from a plain clone).
std::string GoldenDir(std::string_view name);
std::string TestDataDir();

// Strict UTF-8: no overlong forms, no surrogates, nothing past U+10FFFF, no truncated sequence.
bool IsValidUtf8(std::string_view s);

void WriteFile(const std::string& path, std::string_view bytes);
std::string ReadFile(const std::string& path);

}  // namespace gsa::testing
