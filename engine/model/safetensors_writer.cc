#include "engine/model/safetensors_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <memory>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/util/status_macros.h"
#include "nlohmann/json.hpp"

// Tensor bytes are written exactly as the fill callbacks produce them, i.e. in host order, and the
// format is little-endian.
static_assert(std::endian::native == std::endian::little, "gsa-serve assumes a little-endian host");

namespace gsa {
namespace {

constexpr absl::string_view kMetadataKey = "__metadata__";

// An output file that is closed on destruction and, unless Commit succeeded, removed: a failed
// write must not leave a truncated checkpoint behind that looks like a real one by its name.
class OutputFile {
 public:
  static absl::StatusOr<std::unique_ptr<OutputFile>> Create(const std::string& path) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return Error(path, "cannot create", errno);
    return std::make_unique<OutputFile>(path, fd);
  }

  OutputFile(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  ~OutputFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(path_.c_str());
  }
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;

  // Writes all of [data, data + n), retrying short writes and EINTR.
  absl::Status Write(const void* data, size_t n) {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      const ssize_t written = ::write(fd_, p, n);
      if (written < 0) {
        if (errno == EINTR) continue;
        return Error(path_, "write failed", errno);
      }
      p += written;
      n -= static_cast<size_t>(written);
    }
    return absl::OkStatus();
  }

  // Closes the file, which can itself report a deferred IO error, and keeps it.
  absl::Status Commit() {
    const int fd = std::exchange(fd_, -1);
    if (::close(fd) != 0) return Error(path_, "close failed", errno);
    committed_ = true;
    return absl::OkStatus();
  }

 private:
  static absl::Status Error(const std::string& path, absl::string_view what, int err) {
    return absl::InternalError(absl::StrCat(path, ": ", what, ": ", std::strerror(err)));
  }

  std::string path_;
  int fd_ = -1;
  bool committed_ = false;
};

}  // namespace

void SafetensorsWriter::SetMetadata(std::string key, std::string value) {
  metadata_[std::move(key)] = std::move(value);
}

void SafetensorsWriter::AddTensor(std::string name, DType dtype, std::vector<int64_t> shape,
                                  FillFn fill) {
  // Byte count with overflow checks; a bad shape is remembered and reported by WriteTo.
  uint64_t nbytes = DTypeSize(dtype);
  bool valid = true;
  for (const int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(nbytes, static_cast<uint64_t>(d), &nbytes)) valid = false;
  }
  if (valid && __builtin_add_overflow(data_bytes_, nbytes, &data_bytes_)) valid = false;
  if (!valid) {
    if (deferred_error_.ok()) {
      deferred_error_ = absl::InvalidArgumentError(
          absl::StrCat("tensor \"", name, "\": shape must be non-negative and its byte count must "
                       "fit in 64 bits"));
    }
    nbytes = 0;
  }
  pending_.push_back(Pending{std::move(name), dtype, std::move(shape),
                             static_cast<size_t>(nbytes), std::move(fill)});
}

std::vector<std::string> SafetensorsWriter::tensor_names() const {
  std::vector<std::string> names;
  names.reserve(pending_.size());
  for (const Pending& p : pending_) names.push_back(p.name);
  return names;
}

absl::Status SafetensorsWriter::WriteTo(const std::string& path) {
  // Take everything out first, so the writer is empty however this returns.
  std::vector<Pending> pending = std::exchange(pending_, {});
  std::map<std::string, std::string> metadata = std::exchange(metadata_, {});
  data_bytes_ = 0;
  const absl::Status deferred = std::exchange(deferred_error_, absl::OkStatus());
  if (!deferred.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", deferred.message()));
  }

  // ordered_json keeps tensors in the order added, so the file reads in the same order it was
  // declared (and data_offsets increase down the header).
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [key, value] : metadata) meta[key] = value;
    header[std::string(kMetadataKey)] = std::move(meta);
  }
  std::set<std::string_view> names;
  uint64_t offset = 0;
  for (const Pending& p : pending) {
    if (p.name == kMetadataKey) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor name \"", kMetadataKey, "\" is reserved for metadata"));
    }
    if (!names.insert(p.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor \"", p.name, "\" was added twice"));
    }
    header[p.name] = {{"dtype", DTypeName(p.dtype)},
                      {"shape", p.shape},
                      {"data_offsets", {offset, offset + p.nbytes}}};
    offset += p.nbytes;
  }

  // Tensor names come from the caller and may hold invalid UTF-8; write them replaced rather than
  // throw out of this function.
  std::string text = header.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
  // Spaces are valid JSON whitespace; padding with them puts the data section (8 + header) on an
  // 8-byte boundary, so readers may load F64/I64 in place.
  text.append((8 - (8 + text.size()) % 8) % 8, ' ');
  const uint64_t header_len = text.size();

  GSA_ASSIGN_OR_RETURN(std::unique_ptr<OutputFile> out, OutputFile::Create(path));
  GSA_RETURN_IF_ERROR(out->Write(&header_len, sizeof(header_len)));  // little-endian u64
  GSA_RETURN_IF_ERROR(out->Write(text.data(), text.size()));

  // One buffer, grown to the largest tensor so far and reused. It is zeroed before each fill so a
  // callback that writes fewer bytes than asked leaves zeros, never another tensor's (or the
  // heap's) old contents, and the file stays a deterministic function of the callbacks.
  std::unique_ptr<std::byte[]> buffer;
  size_t capacity = 0;
  for (Pending& p : pending) {
    if (p.nbytes == 0) continue;
    if (p.nbytes > capacity) {
      buffer.reset();  // free the old one before allocating the bigger one
      buffer = std::make_unique_for_overwrite<std::byte[]>(p.nbytes);
      capacity = p.nbytes;
    }
    std::memset(buffer.get(), 0, p.nbytes);
    if (p.fill) p.fill(buffer.get(), p.nbytes);  // no callback: the tensor is zeros
    GSA_RETURN_IF_ERROR(out->Write(buffer.get(), p.nbytes));
  }
  return out->Commit();
}

}  // namespace gsa
