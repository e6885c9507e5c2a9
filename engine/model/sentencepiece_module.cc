// Loads libgsa_spm.so (the sentencepiece module) in an isolated symbol scope. See
// sentencepiece_impl.h for why: Debian's libsentencepiece exports a bundled protobuf.
#include <dlfcn.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <memory>
#include <string>

#include "engine/model/sentencepiece_impl.h"

namespace gsa::internal {
namespace {

// Keeps the module loaded for as long as the model object it made lives.
class ModuleHandle {
 public:
  explicit ModuleHandle(void* handle) : handle_(handle) {}
  ~ModuleHandle() {
    if (handle_ != nullptr) dlclose(handle_);
  }
  ModuleHandle(const ModuleHandle&) = delete;
  ModuleHandle& operator=(const ModuleHandle&) = delete;
  void* get() const { return handle_; }

 private:
  void* handle_;
};

// The model object plus the module that implements it; the object goes first.
class ModuleBacked final : public SentencePieceImpl {
 public:
  ModuleBacked(std::unique_ptr<ModuleHandle> module, std::unique_ptr<SentencePieceImpl> impl)
      : module_(std::move(module)), impl_(std::move(impl)) {}
  bool Encode(std::string_view text, std::vector<int>* ids, std::string* error) const override {
    return impl_->Encode(text, ids, error);
  }
  bool Decode(const std::vector<int>& ids, std::string* text, std::string* error) const override {
    return impl_->Decode(ids, text, error);
  }
  std::string IdToPiece(int id) const override { return impl_->IdToPiece(id); }
  int piece_size() const override { return impl_->piece_size(); }
  int bos_id() const override { return impl_->bos_id(); }
  int eos_id() const override { return impl_->eos_id(); }

 private:
  std::unique_ptr<ModuleHandle> module_;  // declared first: destroyed last
  std::unique_ptr<SentencePieceImpl> impl_;
};

std::string ModulePath() {
  if (const char* env = std::getenv("GSA_SPM_MODULE"); env != nullptr && *env != '\0') return env;
  char exe[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n <= 0) return "libgsa_spm.so";
  std::string dir(exe, static_cast<size_t>(n));
  dir.resize(dir.rfind('/') + 1);
  return dir + "libgsa_spm.so";
}

}  // namespace

std::unique_ptr<SentencePieceImpl> LoadSentencePiece(const std::string& path,
                                                     SentencePieceImpl::LoadError* code,
                                                     std::string* error) {
  const std::string module_path = ModulePath();
  // RTLD_DEEPBIND makes the module and libsentencepiece resolve their own (bundled protobuf)
  // symbols first; RTLD_LOCAL keeps them out of everyone else's lookups. The sanitizers'
  // interceptors do not work with RTLD_DEEPBIND, and sanitized test binaries link no protobuf.
  int flags = RTLD_NOW | RTLD_LOCAL;
#if !defined(__SANITIZE_ADDRESS__)
  flags |= RTLD_DEEPBIND;
#endif
  auto module = std::make_unique<ModuleHandle>(dlopen(module_path.c_str(), flags));
  if (module->get() == nullptr) {
    *code = SentencePieceImpl::LoadError::kModule;
    const char* why = dlerror();
    *error = "the sentencepiece module " + module_path + " could not be loaded (" +
             (why ? why : "unknown error") +
             "); it is built beside the binaries (set GSA_SPM_MODULE to its path if it was moved)";
    return nullptr;
  }
  auto load = reinterpret_cast<LoadSentencePieceFn>(dlsym(module->get(), kLoadSentencePieceSymbol));
  if (load == nullptr) {
    *code = SentencePieceImpl::LoadError::kModule;
    *error = "the sentencepiece module " + module_path + " has no entry point " + kLoadSentencePieceSymbol;
    return nullptr;
  }
  int c = 0;
  std::unique_ptr<SentencePieceImpl> impl(load(path.c_str(), &c, error));
  *code = static_cast<SentencePieceImpl::LoadError>(c);
  if (impl == nullptr) return nullptr;
  return std::make_unique<ModuleBacked>(std::move(module), std::move(impl));
}

}  // namespace gsa::internal
