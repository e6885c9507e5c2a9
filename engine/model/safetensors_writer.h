// SafetensorsWriter: writes one .safetensors file. Tensors are declared first (name, dtype,
// shape, and a callback that fills their bytes); WriteTo then writes the header and streams each
// tensor's bytes through a bounded buffer, so multi-GB checkpoints never sit in memory at once.
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

  // Writes the file and clears the writer. IO errors name the path.
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
};

}  // namespace gsa
