// Safetensors reading and writing: what a valid file looks like (writer → reader round trips,
// alignment, conversions), every rule a hostile header can break (each refused with a message
// naming the file, the tensor and the problem), and checkpoint directories, single or sharded.
#include "engine/model/safetensors.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/model/safetensors_writer.h"
#include "tests/testing/test_support.h"

namespace gsa {
namespace {

using ::gsa::testing::TempDir;
using ::gsa::testing::WriteFile;
using ::testing::HasSubstr;

// A raw file: the 8-byte little-endian header length, the header text, the data bytes.
std::string RawFile(std::string_view header, std::string_view data = "",
                    std::optional<uint64_t> declared_length = std::nullopt) {
  const uint64_t n = declared_length.value_or(header.size());
  std::string out(8, '\0');
  std::memcpy(out.data(), &n, 8);
  out.append(header);
  out.append(data);
  return out;
}

// Writes a raw file into `dir` and opens it.
absl::StatusOr<std::unique_ptr<SafetensorsFile>> OpenRaw(const TempDir& dir, const std::string& bytes) {
  const std::string path = dir.File("model.safetensors");
  WriteFile(path, bytes);
  return SafetensorsFile::Open(path);
}

// Opens a file whose header is `header` and whose data region is `data_size` zero bytes.
absl::StatusOr<std::unique_ptr<SafetensorsFile>> OpenHeader(const TempDir& dir,
                                                            std::string_view header,
                                                            size_t data_size = 0) {
  return OpenRaw(dir, RawFile(header, std::string(data_size, '\0')));
}

template <typename T>
SafetensorsWriter::FillFn Bytes(std::vector<T> values) {
  return [values = std::move(values)](std::byte* out, size_t nbytes) {
    ASSERT_EQ(nbytes, values.size() * sizeof(T));
    std::memcpy(out, values.data(), nbytes);
  };
}

std::vector<float> ToFloats(const TensorView& t) {
  std::vector<float> out(static_cast<size_t>(t.numel()));
  const absl::Status s = ConvertToFloat(t, out.data());
  EXPECT_TRUE(s.ok()) << s;
  return out;
}

uint64_t HeaderLength(const std::string& path) {
  const std::string bytes = gsa::testing::ReadFile(path);
  uint64_t n = 0;
  if (bytes.size() >= 8) std::memcpy(&n, bytes.data(), 8);
  return n;
}

// ---- Valid files -----------------------------------------------------------------------------

TEST(SafetensorsWriter, RoundTripsF32Bf16F16I64AndMetadata) {
  TempDir dir;
  const std::string path = dir.File("model.safetensors");
  SafetensorsWriter w;
  w.SetMetadata("format", "pt");
  w.SetMetadata("note", "round trip");
  w.AddTensor("f32", DType::kF32, {2, 3}, Bytes<float>({1, -2, 3.5f, 0, 1e-3f, 65504}));
  w.AddTensor("bf16", DType::kBF16, {3},
              Bytes<uint16_t>({FloatToBf16(1.0f), FloatToBf16(-0.5f), FloatToBf16(3.0e38f)}));
  w.AddTensor("f16", DType::kF16, {2}, Bytes<uint16_t>({FloatToF16(0.25f), FloatToF16(-65504.0f)}));
  w.AddTensor("i64", DType::kI64, {1, 2}, Bytes<int64_t>({-7, int64_t{1} << 40}));
  EXPECT_EQ(w.num_tensors(), 4u);
  EXPECT_EQ(w.data_bytes(), 24u + 6u + 4u + 16u);
  ASSERT_TRUE(w.WriteTo(path).ok());

  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const SafetensorsFile& f = **file;
  EXPECT_EQ(f.path(), path);
  EXPECT_EQ(f.tensors().size(), 4u);
  EXPECT_THAT(f.metadata(), ::testing::ElementsAre(::testing::Pair("format", "pt"),
                                                   ::testing::Pair("note", "round trip")));

  const TensorView* f32 = f.Find("f32");
  ASSERT_NE(f32, nullptr);
  EXPECT_EQ(f32->dtype, DType::kF32);
  EXPECT_EQ(f32->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(f32->nbytes, 24u);
  EXPECT_EQ(f32->file, path);
  EXPECT_THAT(ToFloats(*f32), ::testing::ElementsAre(1, -2, 3.5f, 0, 1e-3f, 65504));

  const TensorView* bf16 = f.Find("bf16");
  ASSERT_NE(bf16, nullptr);
  EXPECT_EQ(bf16->dtype, DType::kBF16);
  EXPECT_THAT(ToFloats(*bf16), ::testing::ElementsAre(1.0f, -0.5f, Bf16ToFloat(FloatToBf16(3.0e38f))));

  const TensorView* f16 = f.Find("f16");
  ASSERT_NE(f16, nullptr);
  EXPECT_EQ(f16->dtype, DType::kF16);
  EXPECT_THAT(ToFloats(*f16), ::testing::ElementsAre(0.25f, -65504.0f));

  const TensorView* i64 = f.Find("i64");
  ASSERT_NE(i64, nullptr);
  EXPECT_EQ(i64->dtype, DType::kI64);
  EXPECT_EQ(i64->ShapeString(), "[1, 2]");
  int64_t ints[2];
  std::memcpy(ints, i64->data, sizeof(ints));
  EXPECT_EQ(ints[0], -7);
  EXPECT_EQ(ints[1], int64_t{1} << 40);

  EXPECT_EQ(f.Find("absent"), nullptr);
}

TEST(SafetensorsWriter, DataSectionStartsAtEightByteAlignedOffset) {
  TempDir dir;
  // Names of every length mod 8 make every header length mod 8 appear before padding.
  for (int extra = 0; extra < 8; ++extra) {
    const std::string path = dir.File(absl::StrCat("aligned", extra, ".safetensors"));
    std::string name = "t";
    name.append(static_cast<size_t>(extra), 'x');
    SafetensorsWriter w;
    w.AddTensor(name, DType::kF64, {1}, Bytes<double>({0.5}));
    ASSERT_TRUE(w.WriteTo(path).ok());
    EXPECT_EQ((8 + HeaderLength(path)) % 8, 0u) << "name length " << extra + 1;
    auto file = SafetensorsFile::Open(path);
    ASSERT_TRUE(file.ok()) << file.status();
    ASSERT_EQ((*file)->tensors().size(), 1u);
    const TensorView& t = (*file)->tensors().begin()->second;
    // The mapping is page-aligned, so an aligned file offset gives an aligned pointer.
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data) % 8, 0u);
  }
}

TEST(SafetensorsWriter, HeaderListsTensorsInOrderAddedWithContiguousOffsets) {
  TempDir dir;
  const std::string path = dir.File("order.safetensors");
  SafetensorsWriter w;
  w.SetMetadata("k", "v");
  w.AddTensor("zeta", DType::kF32, {2}, Bytes<float>({1, 2}));
  w.AddTensor("alpha", DType::kU8, {3}, Bytes<uint8_t>({1, 2, 3}));
  w.AddTensor("mid", DType::kI32, {1}, Bytes<int32_t>({9}));
  EXPECT_EQ(w.tensor_names(), (std::vector<std::string>{"zeta", "alpha", "mid"}));
  ASSERT_TRUE(w.WriteTo(path).ok());
  const std::string bytes = gsa::testing::ReadFile(path);
  const std::string header = bytes.substr(8, HeaderLength(path));
  EXPECT_LT(header.find("__metadata__"), header.find("\"zeta\""));
  EXPECT_LT(header.find("\"zeta\""), header.find("\"alpha\""));
  EXPECT_LT(header.find("\"alpha\""), header.find("\"mid\""));
  EXPECT_THAT(header, HasSubstr("\"data_offsets\":[0,8]"));
  EXPECT_THAT(header, HasSubstr("\"data_offsets\":[8,11]"));
  EXPECT_THAT(header, HasSubstr("\"data_offsets\":[11,15]"));
  EXPECT_EQ(bytes.size(), 8 + header.size() + 15);
}

TEST(SafetensorsWriter, ClearsItselfAfterWriteTo) {
  TempDir dir;
  SafetensorsWriter w;
  w.SetMetadata("k", "v");
  w.AddTensor("a", DType::kF32, {1}, Bytes<float>({1}));
  ASSERT_TRUE(w.WriteTo(dir.File("first.safetensors")).ok());
  EXPECT_EQ(w.num_tensors(), 0u);
  EXPECT_EQ(w.data_bytes(), 0u);
  w.AddTensor("b", DType::kF32, {1}, Bytes<float>({2}));
  ASSERT_TRUE(w.WriteTo(dir.File("second.safetensors")).ok());
  auto second = SafetensorsFile::Open(dir.File("second.safetensors"));
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ((*second)->tensors().size(), 1u);
  EXPECT_NE((*second)->Find("b"), nullptr);
  EXPECT_TRUE((*second)->metadata().empty());
}

TEST(SafetensorsWriter, RefusesDuplicateTensorNameAndLeavesNoFile) {
  TempDir dir;
  const std::string path = dir.File("dup.safetensors");
  SafetensorsWriter w;
  w.AddTensor("a", DType::kF32, {1}, Bytes<float>({1}));
  w.AddTensor("a", DType::kF32, {1}, Bytes<float>({2}));
  const absl::Status s = w.WriteTo(path);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("\"a\""));
  EXPECT_THAT(s.message(), HasSubstr(path));
  EXPECT_EQ(w.num_tensors(), 0u);
  EXPECT_FALSE(SafetensorsFile::Open(path).ok());
}

TEST(SafetensorsWriter, RefusesNegativeShape) {
  TempDir dir;
  SafetensorsWriter w;
  w.AddTensor("neg", DType::kF32, {2, -1}, nullptr);
  const absl::Status s = w.WriteTo(dir.File("neg.safetensors"));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("\"neg\""));
}

TEST(SafetensorsWriter, ReportsUnwritablePath) {
  TempDir dir;
  const std::string path = dir.File("no/such/dir/model.safetensors");
  SafetensorsWriter w;
  w.AddTensor("a", DType::kF32, {1}, Bytes<float>({1}));
  const absl::Status s = w.WriteTo(path);
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr(path));
}

TEST(SafetensorsFile, OpensFileWithNoTensorsAndEmptyData) {
  TempDir dir;
  SafetensorsWriter w;
  ASSERT_TRUE(w.WriteTo(dir.File("empty.safetensors")).ok());
  auto file = SafetensorsFile::Open(dir.File("empty.safetensors"));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_TRUE((*file)->tensors().empty());
}

TEST(SafetensorsFile, OpensZeroElementTensors) {
  TempDir dir;
  auto file = OpenHeader(dir,
                         R"({"empty":{"dtype":"F32","shape":[0,4],"data_offsets":[0,0]},)"
                         R"("scalar":{"dtype":"F32","shape":[],"data_offsets":[0,4]}})",
                         4);
  ASSERT_TRUE(file.ok()) << file.status();
  const TensorView* empty = (*file)->Find("empty");
  ASSERT_NE(empty, nullptr);
  EXPECT_EQ(empty->numel(), 0);
  EXPECT_EQ(empty->nbytes, 0u);
  EXPECT_TRUE(ConvertToFloat(*empty, nullptr).ok());
  const TensorView* scalar = (*file)->Find("scalar");
  ASSERT_NE(scalar, nullptr);
  EXPECT_EQ(scalar->numel(), 1);
  EXPECT_EQ(scalar->ShapeString(), "[]");
}

TEST(SafetensorsFile, ReadsGoldenFixture) {
  auto file = SafetensorsFile::Open(gsa::testing::GoldenDir("gsa-tiny") + "/model.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  const TensorView* bias = (*file)->Find("model.layers.0.self_attn.indexer.bias");
  ASSERT_NE(bias, nullptr);
  EXPECT_EQ(bias->dtype, DType::kF32);
  EXPECT_EQ(bias->shape, (std::vector<int64_t>{2}));
  EXPECT_TRUE(AllFinite(*bias));
  const std::vector<float> values = ToFloats(*bias);
  EXPECT_FLOAT_EQ(values[0], -0.0028317096f);
  EXPECT_FLOAT_EQ(values[1], 0.011224070f);
  const TensorView* lm_head = (*file)->Find("lm_head.weight");
  ASSERT_NE(lm_head, nullptr);
  EXPECT_EQ(lm_head->ShapeString(), "[512, 128]");
  EXPECT_EQ(lm_head->numel(), 512 * 128);
  EXPECT_TRUE(AllFinite(*lm_head));
}

// ---- Conversions -----------------------------------------------------------------------------

TEST(ConvertToFloat, WidensF16AndBf16AndCopiesF32) {
  // Odd offsets: views into a mapping carry no alignment guarantee.
  std::vector<std::byte> storage(1 + 3 * 4);
  const uint16_t halves[3] = {FloatToF16(1.5f), FloatToF16(-0.125f), 0x7C00};
  std::memcpy(storage.data() + 1, halves, sizeof(halves));
  TensorView f16{.name = "h", .dtype = DType::kF16, .shape = {3}, .data = storage.data() + 1, .nbytes = 6,
                 .file = "mem"};
  float out[3];
  ASSERT_TRUE(ConvertToFloat(f16, out).ok());
  EXPECT_EQ(out[0], 1.5f);
  EXPECT_EQ(out[1], -0.125f);
  EXPECT_EQ(out[2], std::numeric_limits<float>::infinity());

  const uint16_t brains[3] = {FloatToBf16(2.0f), FloatToBf16(-3.0f), FloatToBf16(0.1f)};
  std::memcpy(storage.data() + 1, brains, sizeof(brains));
  TensorView bf16 = f16;
  bf16.dtype = DType::kBF16;
  ASSERT_TRUE(ConvertToFloat(bf16, out).ok());
  EXPECT_EQ(out[0], 2.0f);
  EXPECT_EQ(out[1], -3.0f);
  EXPECT_EQ(out[2], Bf16ToFloat(FloatToBf16(0.1f)));

  const float floats[3] = {0.1f, -7.0f, 1e30f};
  std::memcpy(storage.data() + 1, floats, sizeof(floats));
  TensorView f32{.name = "f", .dtype = DType::kF32, .shape = {3}, .data = storage.data() + 1, .nbytes = 12,
                 .file = "mem"};
  ASSERT_TRUE(ConvertToFloat(f32, out).ok());
  EXPECT_EQ(out[0], 0.1f);
  EXPECT_EQ(out[1], -7.0f);
  EXPECT_EQ(out[2], 1e30f);
}

TEST(ConvertToFloat, RefusesNonFloatDtypesNamingTensorAndDtype) {
  const int64_t v = 3;
  TensorView t{.name = "ids", .dtype = DType::kI64, .shape = {1},
               .data = reinterpret_cast<const std::byte*>(&v), .nbytes = 8, .file = "x.safetensors"};
  float out;
  const absl::Status s = ConvertToFloat(t, &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("\"ids\""));
  EXPECT_THAT(s.message(), HasSubstr("I64"));
  EXPECT_THAT(s.message(), HasSubstr("x.safetensors"));
}

TEST(AllFinite, DetectsNanAndInfinityInEveryFloatFormat) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  auto view = [](DType dtype, const void* data, int64_t n) {
    return TensorView{.name = "t", .dtype = dtype, .shape = {n},
                      .data = static_cast<const std::byte*>(data),
                      .nbytes = static_cast<size_t>(n) * DTypeSize(dtype), .file = "mem"};
  };
  const float f32_ok[3] = {0, -1e38f, std::numeric_limits<float>::denorm_min()};
  const float f32_nan[3] = {0, nan, 1};
  const float f32_inf[3] = {0, 1, -inf};
  EXPECT_TRUE(AllFinite(view(DType::kF32, f32_ok, 3)));
  EXPECT_FALSE(AllFinite(view(DType::kF32, f32_nan, 3)));
  EXPECT_FALSE(AllFinite(view(DType::kF32, f32_inf, 3)));

  const uint16_t bf16_ok[2] = {FloatToBf16(1), 0x7F7F};
  const uint16_t bf16_nan[2] = {FloatToBf16(1), FloatToBf16(nan)};
  const uint16_t bf16_inf[2] = {FloatToBf16(inf), FloatToBf16(1)};
  EXPECT_TRUE(AllFinite(view(DType::kBF16, bf16_ok, 2)));
  EXPECT_FALSE(AllFinite(view(DType::kBF16, bf16_nan, 2)));
  EXPECT_FALSE(AllFinite(view(DType::kBF16, bf16_inf, 2)));

  const uint16_t f16_ok[2] = {0x7BFF, 0x0001};
  const uint16_t f16_nan[2] = {0x3C00, 0x7E00};
  const uint16_t f16_inf[2] = {0xFC00, 0x3C00};
  EXPECT_TRUE(AllFinite(view(DType::kF16, f16_ok, 2)));
  EXPECT_FALSE(AllFinite(view(DType::kF16, f16_nan, 2)));
  EXPECT_FALSE(AllFinite(view(DType::kF16, f16_inf, 2)));

  const double f64_nan[2] = {1.0, std::numeric_limits<double>::quiet_NaN()};
  EXPECT_FALSE(AllFinite(view(DType::kF64, f64_nan, 2)));

  // Integers have no non-finite values: 0xFFFFFFFF is just -1.
  const int32_t ints[1] = {-1};
  EXPECT_TRUE(AllFinite(view(DType::kI32, ints, 1)));
}

// ---- Hostile or broken files -----------------------------------------------------------------

// Expects InvalidArgument whose message contains every one of `parts`.
void ExpectInvalid(const absl::StatusOr<std::unique_ptr<SafetensorsFile>>& result,
                   std::initializer_list<std::string_view> parts) {
  ASSERT_FALSE(result.ok()) << "opened a file it should have refused";
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument) << result.status();
  for (std::string_view part : parts) {
    EXPECT_THAT(result.status().message(), HasSubstr(std::string(part)));
  }
}

TEST(SafetensorsFile, MissingFileIsNotFound) {
  TempDir dir;
  auto file = SafetensorsFile::Open(dir.File("absent.safetensors"));
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(file.status().message(), HasSubstr("absent.safetensors"));
}

TEST(SafetensorsFile, RejectsFileShorterThanEightBytes) {
  TempDir dir;
  ExpectInvalid(OpenRaw(dir, ""), {"model.safetensors", "0 bytes", "8-byte header length"});
  ExpectInvalid(OpenRaw(dir, "abc"), {"3 bytes", "8-byte header length"});
}

TEST(SafetensorsFile, RejectsHeaderLengthPastEndOfFile) {
  TempDir dir;
  // The header claims 100 bytes but the file ends after 10 of them: a header cut short.
  const std::string header = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  ExpectInvalid(OpenRaw(dir, RawFile(header.substr(0, 10), "", 100)),
                {"model.safetensors", "header length 100", "past the end of file"});
}

TEST(SafetensorsFile, RejectsHugeHeaderLength) {
  TempDir dir;
  ExpectInvalid(OpenRaw(dir, RawFile("{}", "", uint64_t{1} << 63)),
                {"huge header length 9223372036854775808"});
  ExpectInvalid(OpenRaw(dir, RawFile("{}", "", SafetensorsFile::kMaxHeaderBytes + 1)),
                {"huge header length"});
}

TEST(SafetensorsFile, RejectsDataCutShort) {
  TempDir dir;
  const std::string path = dir.File("model.safetensors");
  SafetensorsWriter w;
  w.AddTensor("a", DType::kF32, {4}, Bytes<float>({1, 2, 3, 4}));
  w.AddTensor("b", DType::kF32, {4}, Bytes<float>({5, 6, 7, 8}));
  ASSERT_TRUE(w.WriteTo(path).ok());
  std::string bytes = gsa::testing::ReadFile(path);
  bytes.resize(bytes.size() - 3);
  ExpectInvalid(OpenRaw(dir, bytes),
                {"tensor \"b\"", "data_offsets [16, 32]", "past the end of the data region (29 bytes"});
}

TEST(SafetensorsFile, RejectsInvalidJson) {
  TempDir dir;
  ExpectInvalid(OpenHeader(dir, R"({"a":{"dtype":"F32",)"), {"model.safetensors", "not valid JSON"});
  ExpectInvalid(OpenHeader(dir, ""), {"not valid JSON"});
  ExpectInvalid(OpenHeader(dir, "{\"\xff\":1}"), {"not valid JSON"});  // invalid UTF-8
}

TEST(SafetensorsFile, RejectsJsonThatIsNotAnObject) {
  TempDir dir;
  ExpectInvalid(OpenHeader(dir, "[1,2,3]"), {"header must be a JSON object", "array"});
  ExpectInvalid(OpenHeader(dir, "42"), {"header must be a JSON object", "number"});
}

TEST(SafetensorsFile, RejectsEntryThatIsNotAnObject) {
  TempDir dir;
  ExpectInvalid(OpenHeader(dir, R"({"w":[1,2]})"), {"tensor \"w\"", "must be a JSON object"});
}

TEST(SafetensorsFile, RejectsMissingFields) {
  TempDir dir;
  ExpectInvalid(OpenHeader(dir, R"({"w":{"shape":[1],"data_offsets":[0,4]}})", 4),
                {"tensor \"w\"", "missing \"dtype\""});
  ExpectInvalid(OpenHeader(dir, R"({"w":{"dtype":"F32","data_offsets":[0,4]}})", 4),
                {"tensor \"w\"", "missing \"shape\""});
  ExpectInvalid(OpenHeader(dir, R"({"w":{"dtype":"F32","shape":[1]}})", 4),
                {"tensor \"w\"", "missing \"data_offsets\""});
}

TEST(SafetensorsFile, RejectsUnknownDtype) {
  TempDir dir;
  ExpectInvalid(OpenHeader(dir, R"({"w":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}})", 1),
                {"model.safetensors", "tensor \"w\"", "unknown dtype \"F4\""});
  ExpectInvalid(OpenHeader(dir, R"({"w":{"dtype":32,"shape":[1],"data_offsets":[0,4]}})", 4),
                {"tensor \"w\"", "dtype must be a string"});
}

TEST(SafetensorsFile, RejectsNegativeOrNonIntegerShape) {
  TempDir dir;
  ExpectInvalid(OpenHeader(dir, R"({"w":{"dtype":"F32","shape":[2,-1],"data_offsets":[0,0]}})"),
                {"tensor \"w\"", "non-negative integers", "[2,-1]"});
  ExpectInvalid(OpenHeader(dir, R"({"w":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", 4),
                {"tensor \"w\"", "non-negative integers"});
  ExpectInvalid(OpenHeader(dir, R"({"w":{"dtype":"F32","shape":"[2]","data_offsets":[0,8]}})", 8),
                {"tensor \"w\"", "shape must be an array"});
}

TEST(SafetensorsFile, RejectsDeeplyNestedValuesWithoutExhaustingTheStack) {
  TempDir dir;
  // A million nested arrays: neither parsing, echoing the value in the message, nor freeing it
  // may recurse per level.
  constexpr size_t kDepth = 1'000'000;
  const std::string header = absl::StrCat(R"({"w":{"dtype":"F32","data_offsets":[0,0],"shape":)",
                                          std::string(kDepth, '['), std::string(kDepth, ']'), "}}");
  ExpectInvalid(OpenHeader(dir, header), {"tensor \"w\"", "non-negative integers", "[[[..."});
  ExpectInvalid(OpenHeader(dir, std::string(kDepth, '[') + std::string(kDepth, ']')),
                {"header must be a JSON object"});
}

TEST(SafetensorsFile, RejectsShapeWhoseSizeOverflows) {
  TempDir dir;
  // 2^32 · 2^32 wraps to 0 in 64 bits; a naive product would accept [0, 0] offsets.
  ExpectInvalid(
      OpenHeader(dir,
                 R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})"),
      {"tensor \"w\"", "overflows"});
  // Elements fit in 64 bits, bytes (× 4) do not.
  ExpectInvalid(
      OpenHeader(dir,
                 R"({"w":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,0]}})"),
      {"tensor \"w\"", "overflows"});
}

TEST(SafetensorsFile, RejectsOffsetsPastDataRegion) {
  TempDir dir;
  ExpectInvalid(OpenHeader(dir, R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 8),
                {"model.safetensors", "tensor \"w\"", "data_offsets [4, 12]",
                 "past the end of the data region (8 bytes"});
  // An end so large that begin + size would wrap around.
  ExpectInvalid(OpenHeader(dir,
                           R"({"w":{"dtype":"U8","shape":[1],)"
                           R"("data_offsets":[18446744073709551615,18446744073709551615]}})",
                           8),
                {"tensor \"w\"", "past the end of the data region"});
}

TEST(SafetensorsFile, RejectsOffsetsWhoseSpanDoesNotMatchShape) {
  TempDir dir;
  ExpectInvalid(OpenHeader(dir, R"({"x":{"dtype":"F32","shape":[5,4],"data_offsets":[0,100]}})", 100),
                {"model.safetensors: tensor \"x\": data_offsets [0, 100] span 100 bytes but shape "
                 "[5, 4] of F32 needs 80"});
}

TEST(SafetensorsFile, RejectsOffsetsThatAreNotTwoNonNegativeIntegers) {
  TempDir dir;
  for (const char* offsets : {R"([0])", R"([0,4,8])", R"([])", R"(["0","4"])", R"([0.0,4])",
                              R"([-4,0])", R"({"begin":0})", R"("0-4")", R"([0,null])"}) {
    SCOPED_TRACE(offsets);
    const std::string header =
        std::string(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":)") + offsets + "}}";
    ExpectInvalid(OpenHeader(dir, header, 8),
                  {"tensor \"w\"", "data_offsets must be exactly two non-negative integers"});
  }
}

TEST(SafetensorsFile, RejectsBeginAfterEnd) {
  TempDir dir;
  ExpectInvalid(OpenHeader(dir, R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", 8),
                {"tensor \"w\"", "data_offsets [8, 4]", "begin > end"});
}

TEST(SafetensorsFile, RejectsOverlappingTensors) {
  TempDir dir;
  ExpectInvalid(OpenHeader(dir,
                           R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                           R"("b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}})",
                           20),
                {"model.safetensors", "\"b\"", "\"a\"", "overlap"});
  // One range entirely inside another, listed first.
  ExpectInvalid(OpenHeader(dir,
                           R"({"inner":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},)"
                           R"("outer":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})",
                           16),
                {"\"inner\"", "\"outer\"", "overlap"});
  // Two tensors over the same bytes.
  ExpectInvalid(OpenHeader(dir,
                           R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                           R"("b":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}})",
                           8),
                {"overlap"});
}

TEST(SafetensorsFile, EmptyTensorInsideAnotherRangeIsNotAnOverlap) {
  TempDir dir;
  auto file = OpenHeader(dir,
                         R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                         R"("e":{"dtype":"F32","shape":[0],"data_offsets":[8,8]}})",
                         16);
  EXPECT_TRUE(file.ok()) << file.status();
}

TEST(SafetensorsFile, RejectsDuplicateTensorName) {
  TempDir dir;
  ExpectInvalid(OpenHeader(dir,
                           R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                           R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                           8),
                {"\"a\"", "more than once"});
}

TEST(SafetensorsFile, MetadataMustBeAnObjectOfStrings) {
  TempDir dir;
  ExpectInvalid(OpenHeader(dir, R"({"__metadata__":{"format":1}})"),
                {"__metadata__", "\"format\"", "must be a string"});
  ExpectInvalid(OpenHeader(dir, R"({"__metadata__":["pt"]})"), {"__metadata__", "object"});
}

// ---- Checkpoint directories ------------------------------------------------------------------

// Writes a shard holding `names`, each an F32 [2] tensor.
void WriteShard(const std::string& path, const std::vector<std::string>& names) {
  SafetensorsWriter w;
  float value = 1;
  for (const std::string& name : names) {
    w.AddTensor(name, DType::kF32, {2}, Bytes<float>({value, -value}));
    value += 1;
  }
  ASSERT_TRUE(w.WriteTo(path).ok());
}

void WriteIndex(const TempDir& dir, const std::string& weight_map_json) {
  WriteFile(dir.File("model.safetensors.index.json"),
            absl::StrCat(R"({"metadata":{"total_size":32},"weight_map":)", weight_map_json, "}"));
}

absl::Status OpenStatus(const TempDir& dir) { return Checkpoint::Open(dir.path()).status(); }

TEST(Checkpoint, OpensSingleFile) {
  TempDir dir;
  WriteShard(dir.File("model.safetensors"), {"a", "b"});
  auto ckpt = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ((*ckpt)->dir(), dir.path());
  EXPECT_EQ((*ckpt)->tensors().size(), 2u);
  const TensorView* b = (*ckpt)->Find("b");
  ASSERT_NE(b, nullptr);
  EXPECT_THAT(ToFloats(*b), ::testing::ElementsAre(2.0f, -2.0f));
  EXPECT_EQ((*ckpt)->Find("c"), nullptr);
}

TEST(Checkpoint, OpensShardsListedInIndex) {
  TempDir dir;
  WriteShard(dir.File("model-00001-of-00002.safetensors"), {"a", "b"});
  WriteShard(dir.File("model-00002-of-00002.safetensors"), {"c"});
  WriteIndex(dir, R"({"a":"model-00001-of-00002.safetensors","b":"model-00001-of-00002.safetensors",
                      "c":"model-00002-of-00002.safetensors"})");
  auto ckpt = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ((*ckpt)->tensors().size(), 3u);
  const TensorView* c = (*ckpt)->Find("c");
  ASSERT_NE(c, nullptr);
  EXPECT_THAT(c->file, HasSubstr("model-00002-of-00002.safetensors"));
  EXPECT_THAT(ToFloats(*c), ::testing::ElementsAre(1.0f, -1.0f));
  EXPECT_THAT((*ckpt)->Find("a")->file, HasSubstr("model-00001-of-00002.safetensors"));
}

TEST(Checkpoint, IndexTakesPrecedenceOverSingleFile) {
  TempDir dir;
  WriteShard(dir.File("model.safetensors"), {"stale"});
  WriteShard(dir.File("shard.safetensors"), {"a"});
  WriteIndex(dir, R"({"a":"shard.safetensors"})");
  auto ckpt = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_NE((*ckpt)->Find("a"), nullptr);
  EXPECT_EQ((*ckpt)->Find("stale"), nullptr);
}

TEST(Checkpoint, MissingShardIsNotFoundNamingIt) {
  TempDir dir;
  WriteShard(dir.File("one.safetensors"), {"a"});
  WriteIndex(dir, R"({"a":"one.safetensors","b":"two.safetensors"})");
  const absl::Status s = OpenStatus(dir);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_THAT(s.message(), HasSubstr("two.safetensors"));
}

TEST(Checkpoint, RejectsTensorInADifferentShardThanListed) {
  TempDir dir;
  WriteShard(dir.File("one.safetensors"), {"a"});
  WriteShard(dir.File("two.safetensors"), {"b"});
  WriteIndex(dir, R"({"a":"two.safetensors","b":"one.safetensors"})");
  const absl::Status s = OpenStatus(dir);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("tensor \"a\" is listed in shard \"two.safetensors\""));
  EXPECT_THAT(s.message(), HasSubstr("one.safetensors"));
}

TEST(Checkpoint, RejectsTensorPresentInTwoShards) {
  TempDir dir;
  WriteShard(dir.File("one.safetensors"), {"a", "dup"});
  WriteShard(dir.File("two.safetensors"), {"dup"});
  WriteIndex(dir, R"({"a":"one.safetensors","dup":"two.safetensors"})");
  const absl::Status s = OpenStatus(dir);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("tensor \"dup\" appears in two shards"));
  EXPECT_THAT(s.message(), HasSubstr("one.safetensors"));
  EXPECT_THAT(s.message(), HasSubstr("two.safetensors"));
}

TEST(Checkpoint, RejectsTensorMissingFromWeightMap) {
  TempDir dir;
  WriteShard(dir.File("one.safetensors"), {"a", "unlisted"});
  WriteIndex(dir, R"({"a":"one.safetensors"})");
  const absl::Status s = OpenStatus(dir);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("tensor \"unlisted\" is not listed in the weight_map"));
}

TEST(Checkpoint, RejectsListedTensorThatItsShardLacks) {
  TempDir dir;
  WriteShard(dir.File("one.safetensors"), {"a"});
  WriteIndex(dir, R"({"a":"one.safetensors","ghost":"one.safetensors"})");
  const absl::Status s = OpenStatus(dir);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("tensor \"ghost\""));
  EXPECT_THAT(s.message(), HasSubstr("no such tensor"));
}

TEST(Checkpoint, RejectsShardPathsThatLeaveTheDirectory) {
  TempDir dir;
  WriteShard(dir.File("one.safetensors"), {"a"});
  for (const char* shard : {"../one.safetensors", "/etc/passwd", "sub/one.safetensors", "..", ""}) {
    SCOPED_TRACE(shard);
    WriteIndex(dir, absl::StrCat(R"({"a":")", shard, R"("})"));
    const absl::Status s = OpenStatus(dir);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_THAT(s.message(), HasSubstr(absl::StrCat("shard \"", shard, "\"")));
    EXPECT_THAT(s.message(), HasSubstr("not a plain file name"));
  }
}

TEST(Checkpoint, RejectsMalformedIndex) {
  TempDir dir;
  WriteFile(dir.File("model.safetensors.index.json"), "{not json");
  EXPECT_EQ(OpenStatus(dir).code(), absl::StatusCode::kInvalidArgument);
  WriteFile(dir.File("model.safetensors.index.json"), R"({"metadata":{}})");
  EXPECT_THAT(OpenStatus(dir).message(), HasSubstr("weight_map"));
  WriteIndex(dir, R"({"a":7})");
  EXPECT_THAT(OpenStatus(dir).message(), HasSubstr("tensor \"a\""));
}

TEST(Checkpoint, PropagatesInvalidShard) {
  TempDir dir;
  WriteFile(dir.File("bad.safetensors"), "abc");
  WriteIndex(dir, R"({"a":"bad.safetensors"})");
  const absl::Status s = OpenStatus(dir);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("bad.safetensors"));
}

TEST(Checkpoint, DirectoryWithoutCheckpointIsNotFound) {
  TempDir dir;
  const absl::Status s = OpenStatus(dir);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr(dir.path()));
  EXPECT_THAT(s.message(),
              HasSubstr("neither model.safetensors nor model.safetensors.index.json"));
}

TEST(Checkpoint, OpensGoldenFixtureDirectory) {
  auto ckpt = Checkpoint::Open(gsa::testing::GoldenDir("gsa-tiny"));
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  const TensorView* lm_head = (*ckpt)->Find("lm_head.weight");
  ASSERT_NE(lm_head, nullptr);
  EXPECT_EQ(lm_head->shape, (std::vector<int64_t>{512, 128}));
}

}  // namespace
}  // namespace gsa
