#include "engine/model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <set>
#include <sstream>
#include <tuple>
#include <utility>

#include "absl/memory/memory.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/util/status_macros.h"
#include "nlohmann/json.hpp"

// Tensor bytes are little-endian on disk and are read in place.
static_assert(std::endian::native == std::endian::little, "gsa-serve assumes a little-endian host");

namespace gsa {

// A read-only memory mapping of a whole file, unmapped and closed on destruction. A zero-length
// file has no mapping (mmap refuses length 0) and data() is nullptr.
//
// The mapping is MAP_PRIVATE and read-only; if another process truncates the file while it is
// mapped, touching the lost pages raises SIGBUS. Checkpoints are expected to be immutable while
// served, as with every mmap-based loader.
class MappedFile {
 public:
  static absl::StatusOr<std::unique_ptr<MappedFile>> Open(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ErrnoError(path, "cannot open", errno);
    // Owns fd from here on, so every early return below closes it.
    auto file = std::make_unique<MappedFile>(fd);
    struct stat st {};
    if (::fstat(fd, &st) != 0) return ErrnoError(path, "cannot stat", errno);
    if (!S_ISREG(st.st_mode)) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
    }
    file->size_ = static_cast<size_t>(st.st_size);
    if (file->size_ > 0) {
      void* addr = ::mmap(nullptr, file->size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (addr == MAP_FAILED) return ErrnoError(path, "cannot mmap", errno);
      file->addr_ = addr;
    }
    return file;
  }

  explicit MappedFile(int fd) : fd_(fd) {}
  ~MappedFile() {
    if (addr_ != nullptr) ::munmap(addr_, size_);
    if (fd_ >= 0) ::close(fd_);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::byte* data() const { return static_cast<const std::byte*>(addr_); }
  size_t size() const { return size_; }

 private:
  static absl::Status ErrnoError(const std::string& path, absl::string_view what, int err) {
    std::string message = absl::StrCat(path, ": ", what, ": ", std::strerror(err));
    if (err == ENOENT) return absl::NotFoundError(message);
    if (err == EACCES || err == EPERM) return absl::PermissionDeniedError(message);
    return absl::InternalError(message);
  }

  int fd_ = -1;
  void* addr_ = nullptr;
  size_t size_ = 0;
};

namespace {

using nlohmann::json;

constexpr absl::string_view kMetadataKey = "__metadata__";
constexpr absl::string_view kIndexFile = "model.safetensors.index.json";
constexpr absl::string_view kSingleFile = "model.safetensors";

// DTypeName for messages (Debian's Abseil has its own string_view type, which StrCat takes).
absl::string_view Name(DType dtype) {
  const std::string_view name = DTypeName(dtype);
  return absl::string_view(name.data(), name.size());
}

// Untrusted JSON echoed into a message. json::dump recurses once per nesting level, so a hostile
// value nested a million deep would overflow the stack; this prints at most two levels and a few
// elements per level. Invalid UTF-8 is replaced rather than thrown on, and the result is cut so one
// bad entry cannot flood the log.
void AppendSnippet(const json& value, int depth, std::string& out) {
  constexpr size_t kMaxElements = 8;
  if (!value.is_structured()) {
    out += value.dump(-1, ' ', false, json::error_handler_t::replace);
    return;
  }
  const bool array = value.is_array();
  out += array ? '[' : '{';
  if (depth >= 2 && !value.empty()) {
    out += "...";
  } else {
    size_t n = 0;
    for (auto it = value.begin(); it != value.end(); ++it, ++n) {
      if (n > 0) out += ',';
      if (n == kMaxElements) {
        out += "...";
        break;
      }
      if (!array) {
        out += json(it.key()).dump(-1, ' ', false, json::error_handler_t::replace);
        out += ':';
      }
      AppendSnippet(*it, depth + 1, out);
    }
  }
  out += array ? ']' : '}';
}

std::string Snippet(const json& value) {
  std::string s;
  AppendSnippet(value, 0, s);
  constexpr size_t kMax = 120;
  if (s.size() > kMax) s = absl::StrCat(s.substr(0, kMax), "...");
  return s;
}

absl::Status FileError(const std::string& path, absl::string_view rule) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", rule));
}

absl::Status TensorError(const std::string& path, absl::string_view tensor,
                         absl::string_view rule) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": tensor \"", tensor, "\": ", rule));
}

std::string JoinShape(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// numel and nbytes of a shape, or nullopt when either overflows (a hostile header can declare
// dimensions whose product wraps around to a small number).
struct Extent {
  int64_t numel;
  size_t nbytes;
};
std::optional<Extent> ComputeExtent(const std::vector<int64_t>& shape, size_t elem_size) {
  // A zero dimension makes the tensor empty however large the others are; checking it first keeps
  // [huge, huge, 0] from being refused as an overflow.
  if (std::find(shape.begin(), shape.end(), 0) != shape.end()) return Extent{0, 0};
  uint64_t numel = 1;
  for (const int64_t d : shape) {
    if (__builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel)) return std::nullopt;
  }
  if (numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
  uint64_t nbytes = 0;
  if (__builtin_mul_overflow(numel, static_cast<uint64_t>(elem_size), &nbytes)) return std::nullopt;
  if (nbytes > std::numeric_limits<size_t>::max()) return std::nullopt;
  return Extent{static_cast<int64_t>(numel), static_cast<size_t>(nbytes)};
}

// A header entry after validation, before it becomes a TensorView.
struct Entry {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t begin;
  uint64_t end;
};

absl::StatusOr<Entry> ParseEntry(const std::string& path, const std::string& name,
                                 const json& value, uint64_t data_size) {
  if (!value.is_object()) {
    return TensorError(path, name, absl::StrCat("entry must be a JSON object, got ", Snippet(value)));
  }
  Entry entry;
  entry.name = name;

  const auto dtype_it = value.find("dtype");
  if (dtype_it == value.end()) return TensorError(path, name, "missing \"dtype\"");
  if (!dtype_it->is_string()) {
    return TensorError(path, name, absl::StrCat("dtype must be a string, got ", Snippet(*dtype_it)));
  }
  const std::optional<DType> dtype = DTypeFromName(dtype_it->get_ref<const std::string&>());
  if (!dtype) {
    return TensorError(path, name, absl::StrCat("unknown dtype ", Snippet(*dtype_it)));
  }
  entry.dtype = *dtype;

  const auto shape_it = value.find("shape");
  if (shape_it == value.end()) return TensorError(path, name, "missing \"shape\"");
  if (!shape_it->is_array()) {
    return TensorError(path, name, absl::StrCat("shape must be an array, got ", Snippet(*shape_it)));
  }
  for (const json& dim : *shape_it) {
    // nlohmann parses non-negative integer literals as unsigned; negatives and floats are refused.
    if (!dim.is_number_unsigned() ||
        dim.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return TensorError(path, name,
                         absl::StrCat("shape must be an array of non-negative integers, got ",
                                      Snippet(*shape_it)));
    }
    entry.shape.push_back(static_cast<int64_t>(dim.get<uint64_t>()));
  }
  const size_t elem_size = DTypeSize(entry.dtype);
  const std::optional<Extent> extent = ComputeExtent(entry.shape, elem_size);
  if (!extent) {
    return TensorError(path, name,
                       absl::StrCat("shape ", JoinShape(entry.shape), " of ", Name(entry.dtype),
                                    " overflows 64-bit element/byte counts"));
  }

  const auto offsets_it = value.find("data_offsets");
  if (offsets_it == value.end()) return TensorError(path, name, "missing \"data_offsets\"");
  const json& offsets = *offsets_it;
  if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
      !offsets[1].is_number_unsigned()) {
    return TensorError(path, name,
                       absl::StrCat("data_offsets must be exactly two non-negative integers "
                                    "[begin, end], got ",
                                    Snippet(offsets)));
  }
  entry.begin = offsets[0].get<uint64_t>();
  entry.end = offsets[1].get<uint64_t>();
  const std::string range = absl::StrCat("[", entry.begin, ", ", entry.end, "]");
  if (entry.begin > entry.end) {
    return TensorError(path, name, absl::StrCat("data_offsets ", range, " have begin > end"));
  }
  if (entry.end > data_size) {
    return TensorError(path, name,
                       absl::StrCat("data_offsets ", range, " run past the end of the data region (",
                                    data_size, " bytes; file truncated?)"));
  }
  if (entry.end - entry.begin != extent->nbytes) {
    return TensorError(path, name,
                       absl::StrCat("data_offsets ", range, " span ", entry.end - entry.begin,
                                    " bytes but shape ", JoinShape(entry.shape), " of ",
                                    Name(entry.dtype), " needs ", extent->nbytes));
  }
  return entry;
}

absl::Status ParseMetadata(const std::string& path, const json& value,
                           std::map<std::string, std::string>& out) {
  if (!value.is_object()) {
    return FileError(path, absl::StrCat("\"__metadata__\" must be an object of strings, got ",
                                        Snippet(value)));
  }
  for (const auto& [key, v] : value.items()) {
    if (!v.is_string()) {
      return FileError(path, absl::StrCat("\"__metadata__\" key \"", key,
                                          "\" must be a string, got ", Snippet(v)));
    }
    out[key] = v.get<std::string>();
  }
  return absl::OkStatus();
}

// Two tensors sharing bytes would alias each other's weights; the format forbids it. Empty
// tensors occupy no bytes and so cannot overlap anything.
absl::Status CheckNoOverlap(const std::string& path, std::vector<const Entry*> entries) {
  std::sort(entries.begin(), entries.end(), [](const Entry* a, const Entry* b) {
    return std::tie(a->begin, a->end, a->name) < std::tie(b->begin, b->end, b->name);
  });
  const Entry* furthest = nullptr;  // the non-empty range seen so far that ends last
  for (const Entry* e : entries) {
    if (e->begin == e->end) continue;
    if (furthest != nullptr && e->begin < furthest->end) {
      return FileError(path, absl::StrCat("tensor \"", e->name, "\" data_offsets [", e->begin, ", ",
                                          e->end, "] overlap tensor \"", furthest->name,
                                          "\" data_offsets [", furthest->begin, ", ",
                                          furthest->end, "]"));
    }
    if (furthest == nullptr || e->end > furthest->end) furthest = e;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadSmallFile(const std::string& path, uint64_t max_bytes) {
  std::error_code ec;
  const uintmax_t size = std::filesystem::file_size(path, ec);
  if (ec) return absl::NotFoundError(absl::StrCat(path, ": cannot read: ", ec.message()));
  if (size > max_bytes) {
    return FileError(path, absl::StrCat("is ", size, " bytes, more than the ", max_bytes, " allowed"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::InternalError(absl::StrCat(path, ": read error"));
  return std::move(ss).str();
}

// A shard must be a plain file name inside the checkpoint directory: an index is as untrusted as a
// header, and "../../etc/passwd" or "/dev/zero" must never be opened on its say-so.
bool IsPlainFileName(std::string_view name) {
  return !name.empty() && name != "." && name != ".." &&
         name.find('/') == std::string_view::npos && name.find('\\') == std::string_view::npos &&
         name.find('\0') == std::string_view::npos;
}

}  // namespace

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (const int64_t d : shape) n *= d;  // validated on open: cannot overflow
  return n;
}

std::string TensorView::ShapeString() const { return JoinShape(shape); }

absl::Status ConvertToFloat(const TensorView& t, float* out) {
  const size_t n = static_cast<size_t>(t.numel());
  switch (t.dtype) {
    case DType::kF32:
      if (n > 0) std::memcpy(out, t.data, n * sizeof(float));
      return absl::OkStatus();
    case DType::kBF16:
    case DType::kF16: {
      const bool bf16 = t.dtype == DType::kBF16;
      for (size_t i = 0; i < n; ++i) {
        uint16_t bits;  // memcpy: the mapping gives no alignment guarantee per element
        std::memcpy(&bits, t.data + i * sizeof(bits), sizeof(bits));
        out[i] = bf16 ? Bf16ToFloat(bits) : F16ToFloat(bits);
      }
      return absl::OkStatus();
    }
    default:
      return absl::InvalidArgumentError(
          absl::StrCat(t.file, ": tensor \"", t.name, "\": dtype ", Name(t.dtype),
                       " cannot be converted to float (expected F32, F16 or BF16)"));
  }
}

bool AllFinite(const TensorView& t) {
  const size_t n = static_cast<size_t>(t.numel());
  // Integer-only checks on the exponent field: no unaligned float loads, no FP exceptions.
  auto all_words = [&](auto word, auto exponent_mask) {
    for (size_t i = 0; i < n; ++i) {
      decltype(word) bits;
      std::memcpy(&bits, t.data + i * sizeof(bits), sizeof(bits));
      if ((bits & exponent_mask) == exponent_mask) return false;
    }
    return true;
  };
  switch (t.dtype) {
    case DType::kF32:
      return all_words(uint32_t{}, uint32_t{0x7F800000u});
    case DType::kF64:
      return all_words(uint64_t{}, uint64_t{0x7FF0000000000000ull});
    case DType::kF16:
      return all_words(uint16_t{}, uint16_t{0x7C00u});
    case DType::kBF16:
      return all_words(uint16_t{}, uint16_t{0x7F80u});
    case DType::kF8E5M2:
      return all_words(uint8_t{}, uint8_t{0x7Cu});
    case DType::kF8E4M3:
      // The "fn" variant safetensors stores has no inf; only S.1111.111 is NaN.
      for (size_t i = 0; i < n; ++i) {
        if ((std::to_integer<uint8_t>(t.data[i]) & 0x7Fu) == 0x7Fu) return false;
      }
      return true;
    default:
      return true;
  }
}

SafetensorsFile::~SafetensorsFile() = default;

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  GSA_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> mapping, MappedFile::Open(path));
  const size_t file_size = mapping->size();
  if (file_size < 8) {
    return FileError(path, absl::StrCat("file is ", file_size,
                                        " bytes, shorter than the 8-byte header length"));
  }
  uint64_t header_len = 0;
  std::memcpy(&header_len, mapping->data(), sizeof(header_len));
  if (header_len > kMaxHeaderBytes) {
    return FileError(path, absl::StrCat("huge header length ", header_len, " (limit ",
                                        kMaxHeaderBytes, " bytes)"));
  }
  if (header_len > file_size - 8) {
    return FileError(path, absl::StrCat("header length ", header_len, " runs past the end of file (",
                                        file_size, " bytes, so at most ", file_size - 8,
                                        " bytes of header)"));
  }
  const char* header_begin = reinterpret_cast<const char*>(mapping->data()) + 8;
  const char* header_end = header_begin + header_len;
  const std::byte* data_begin = mapping->data() + 8 + header_len;
  const uint64_t data_size = file_size - 8 - header_len;

  // nlohmann keeps the last of duplicate keys silently; two entries with one name would make the
  // file mean two things, so note duplicates of top-level keys while parsing.
  std::set<std::string> seen_keys;
  std::string duplicate;
  const json::parser_callback_t note_duplicates = [&](int depth, json::parse_event_t event,
                                                      json& parsed) {
    if (depth == 1 && event == json::parse_event_t::key && parsed.is_string()) {
      const std::string& key = parsed.get_ref<const std::string&>();
      if (!seen_keys.insert(key).second && duplicate.empty()) duplicate = key;
    }
    return true;
  };
  const json header = json::parse(header_begin, header_end, note_duplicates,
                                  /*allow_exceptions=*/false);
  if (header.is_discarded()) return FileError(path, "header is not valid JSON");
  if (!header.is_object()) {
    return FileError(path, absl::StrCat("header must be a JSON object, got ",
                                        header.type_name()));
  }
  if (!duplicate.empty()) {
    return FileError(path, absl::StrCat("key \"", duplicate, "\" appears more than once in the header"));
  }

  // The constructor is private (only Open makes valid files), hence WrapUnique over make_unique.
  auto file = absl::WrapUnique(new SafetensorsFile());
  file->path_ = path;
  std::vector<Entry> entries;
  entries.reserve(header.size());
  for (const auto& [name, value] : header.items()) {
    if (name == kMetadataKey) {
      GSA_RETURN_IF_ERROR(ParseMetadata(path, value, file->metadata_));
      continue;
    }
    GSA_ASSIGN_OR_RETURN(Entry entry, ParseEntry(path, name, value, data_size));
    entries.push_back(std::move(entry));
  }
  std::vector<const Entry*> pointers;
  pointers.reserve(entries.size());
  for (const Entry& e : entries) pointers.push_back(&e);
  GSA_RETURN_IF_ERROR(CheckNoOverlap(path, std::move(pointers)));

  for (Entry& e : entries) {
    TensorView view;
    view.name = e.name;
    view.dtype = e.dtype;
    view.shape = std::move(e.shape);
    view.data = data_begin + e.begin;
    view.nbytes = static_cast<size_t>(e.end - e.begin);
    view.file = path;
    file->tensors_.emplace(std::move(e.name), std::move(view));
  }
  file->mapping_ = std::move(mapping);
  return file;
}

const TensorView* SafetensorsFile::Find(std::string_view name) const {
  const auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& model_dir) {
  namespace fs = std::filesystem;
  auto ckpt = absl::WrapUnique(new Checkpoint());
  ckpt->dir_ = model_dir;
  const std::string index_path = absl::StrCat(model_dir, "/", kIndexFile);
  const std::string single_path = absl::StrCat(model_dir, "/", kSingleFile);
  std::error_code ec;

  if (!fs::exists(index_path, ec)) {
    if (!fs::exists(single_path, ec)) {
      return absl::NotFoundError(absl::StrCat(model_dir, ": directory has neither ", kSingleFile,
                                              " nor ", kIndexFile));
    }
    GSA_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(single_path));
    for (const auto& [name, view] : file->tensors()) ckpt->index_.emplace(name, &view);
    ckpt->files_.push_back(std::move(file));
    return ckpt;
  }

  // Sharded: the index says which shard holds each tensor.
  GSA_ASSIGN_OR_RETURN(const std::string index_text, ReadSmallFile(index_path, SafetensorsFile::kMaxHeaderBytes));
  const json index = json::parse(index_text, nullptr, /*allow_exceptions=*/false);
  if (index.is_discarded() || !index.is_object()) {
    return FileError(index_path, "not a valid JSON object");
  }
  const auto map_it = index.find("weight_map");
  if (map_it == index.end() || !map_it->is_object()) {
    return FileError(index_path, "missing \"weight_map\" object (tensor name -> shard file)");
  }
  std::map<std::string, std::string, std::less<>> shard_of;  // tensor → shard, as listed
  std::set<std::string> shard_names;
  for (const auto& [tensor, shard] : map_it->items()) {
    if (!shard.is_string()) {
      return TensorError(index_path, tensor,
                         absl::StrCat("weight_map value must be a shard file name, got ",
                                      Snippet(shard)));
    }
    const std::string& shard_name = shard.get_ref<const std::string&>();
    if (!IsPlainFileName(shard_name)) {
      return TensorError(index_path, tensor,
                         absl::StrCat("shard \"", shard_name,
                                      "\" is not a plain file name inside the checkpoint "
                                      "directory (absolute paths, '/' and \"..\" are refused)"));
    }
    shard_of.emplace(tensor, shard_name);
    shard_names.insert(shard_name);
  }

  // Open each distinct shard once; std::set order makes error reports deterministic.
  for (const std::string& shard_name : shard_names) {
    const std::string shard_path = absl::StrCat(model_dir, "/", shard_name);
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(shard_path);
    if (!file.ok()) {
      if (absl::IsNotFound(file.status())) {
        return absl::NotFoundError(absl::StrCat("shard \"", shard_name, "\" listed in ", index_path,
                                                " is missing: ", file.status().message()));
      }
      return file.status();
    }
    ckpt->files_.push_back(*std::move(file));
  }

  // Every tensor must be in exactly one shard (checked first: it is the more specific problem),
  // and that shard must be the one the index names.
  for (const auto& file : ckpt->files_) {
    for (const auto& [name, view] : file->tensors()) {
      const auto [it, inserted] = ckpt->index_.emplace(name, &view);
      if (!inserted) {
        return absl::InvalidArgumentError(
            absl::StrCat(model_dir, ": tensor \"", name, "\" appears in two shards, ",
                         it->second->file, " and ", file->path()));
      }
    }
  }
  for (const auto& [name, view] : ckpt->index_) {
    const auto listed = shard_of.find(name);
    if (listed == shard_of.end()) {
      return absl::InvalidArgumentError(absl::StrCat(view->file, ": tensor \"", name,
                                                     "\" is not listed in the weight_map of ",
                                                     index_path));
    }
    const std::string expected_path = absl::StrCat(model_dir, "/", listed->second);
    if (view->file != expected_path) {
      return absl::InvalidArgumentError(absl::StrCat(
          index_path, ": tensor \"", name, "\" is listed in shard \"", listed->second,
          "\" but found in ", view->file));
    }
  }
  for (const auto& [name, shard_name] : shard_of) {
    if (!ckpt->index_.contains(name)) {
      return absl::InvalidArgumentError(absl::StrCat(index_path, ": tensor \"", name,
                                                     "\" is listed in shard \"", shard_name,
                                                     "\" but that shard has no such tensor"));
    }
  }
  return ckpt;
}

const TensorView* Checkpoint::Find(std::string_view name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second;
}

}  // namespace gsa
