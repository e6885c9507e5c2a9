// SafetensorsWriter: writes one .safetensors file. Tensors are declared first (name, dtype,
// shape, and a callback that fills their bytes); WriteTo then writes the header and streams the
// tensors one at a time through a reused buffer, so peak memory is the largest tensor, never the
// whole (possibly multi-GB) checkpoint.
//
// The header lists tensors in the order added (after "__metadata__", when any is set), their
// data_offsets are contiguous, and it is padded with spaces so the data section starts at an
// 8-byte-aligned file offset. Not thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/model/dtype.h"

namespace gsa {

class SafetensorsWriter {
 public:
  // Fills `nbytes` bytes at `out` for the tensor. Called once per tensor, in the order added.
  using FillFn = std::function<void(std::byte* out, size_t nbytes)>;

  void SetMetadata(std::string key, std::string value);
  void AddTensor(std::string name, DType dtype, std::vector<int64_t> shape, FillFn fill);

  // Bytes of tensor data declared so far (for splitting a checkpoint into shards).
  size_t data_bytes() const { return data_bytes_; }
  size_t num_tensors() const { return pending_.size(); }
  std::vector<std::string> tensor_names() const;

  // Writes the file and clears the writer, on success or failure (the fill callbacks are not
  // re-run). IO errors name the path, and a failed write removes the partial file. A duplicate or
  // reserved ("__metadata__") tensor name, or a negative or overflowing shape, is an
  // InvalidArgument error naming the tensor, reported here because AddTensor returns nothing.
  absl::Status WriteTo(const std::string& path);

 private:
  struct Pending {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    size_t nbytes;
    FillFn fill;
  };
  std::vector<Pending> pending_;
  std::map<std::string, std::string> metadata_;
  size_t data_bytes_ = 0;
  absl::Status deferred_error_;  // the first problem AddTensor found, reported by WriteTo
};

}  // namespace gsa
