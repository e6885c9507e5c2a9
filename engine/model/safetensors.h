// Reading safetensors checkpoints: one file (SafetensorsFile) or a directory that may be sharded
// (Checkpoint). Files are memory-mapped read-only; tensors are views into the mapping and stay
// valid as long as the owning object lives.
//
// The header is untrusted input. Opening a file checks, before any tensor is exposed: the 8-byte
// header length fits in the file and is at most kMaxHeaderBytes; the header is a JSON object; every
// entry has a known dtype, a non-negative shape and [begin, end) data offsets inside the data
// region whose size equals numel × element size; no two tensors' byte ranges overlap; no name
// appears twice; "__metadata__", if present, maps strings to strings. Any violation is an
// InvalidArgument error naming the file and the tensor; nothing is half-opened. A missing file is
// NotFound.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/dtype.h"

namespace gsa {

// A tensor inside a mapped file. `data` points at nbytes bytes, little-endian, row-major.
struct TensorView {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const std::byte* data = nullptr;
  size_t nbytes = 0;
  std::string file;  // the file it came from, for error messages

  int64_t numel() const;
  std::string ShapeString() const;  // "[512, 128]"
};

// Converts a floating-point tensor (F32, F16 or BF16) to fp32. `out` must have numel() elements.
// Other dtypes give InvalidArgument naming the tensor and the dtype.
absl::Status ConvertToFloat(const TensorView& t, float* out);

// True when every element of a floating-point tensor is finite. Other dtypes: true.
bool AllFinite(const TensorView& t);

class MappedFile;

// One .safetensors file. Not copyable; thread-safe for concurrent reads after Open.
class SafetensorsFile {
 public:
  // Upper bound on the JSON header we accept (the format's own reference reader uses 100 MB).
  static constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  // nullptr when absent.
  const TensorView* Find(std::string_view name) const;
  const std::map<std::string, TensorView, std::less<>>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  std::unique_ptr<MappedFile> mapping_;
  std::map<std::string, TensorView, std::less<>> tensors_;
  std::map<std::string, std::string> metadata_;
};

// All tensors of a checkpoint directory: `model.safetensors`, or the shards listed by
// `model.safetensors.index.json` (its "weight_map": tensor name → shard file). A tensor listed in
// the index must be in the shard the index names; a tensor found in two shards, a tensor in a shard
// but absent from the weight_map, a shard path that leaves the directory (anything but a plain
// file name), or a missing shard (NotFound) is an error. With no index, `model.safetensors` is
// opened; with neither, NotFound.
class Checkpoint {
 public:
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& model_dir);

  const TensorView* Find(std::string_view name) const;
  // name → view, over all shards.
  const std::map<std::string, const TensorView*, std::less<>>& tensors() const { return index_; }
  const std::string& dir() const { return dir_; }

 private:
  Checkpoint() = default;
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorView*, std::less<>> index_;
};

}  // namespace gsa
