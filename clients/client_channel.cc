#include "clients/client_channel.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/client_interceptor.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace gsa {
namespace {

absl::StatusOr<std::string> ReadFlagFile(const std::string& flag, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, " ", path, ": cannot read (", std::strerror(errno), ")"));
  }
  std::ostringstream s;
  s << in.rdbuf();
  if (s.str().empty()) return absl::InvalidArgumentError(absl::StrCat(flag, " ", path, ": empty file"));
  return s.str();
}

// The key to send, from --api-key or the first key line of --api-key-file; empty for none.
absl::StatusOr<std::string> ApiKey(const ClientSecurity& s) {
  if (!s.api_key.empty() && !s.api_key_file.empty()) {
    return absl::InvalidArgumentError("give --api-key or --api-key-file, not both");
  }
  std::string key = s.api_key;
  std::string flag = "--api-key";
  if (!s.api_key_file.empty()) {
    flag = absl::StrCat("--api-key-file ", s.api_key_file);
    absl::StatusOr<std::string> text = ReadFlagFile("--api-key-file", s.api_key_file);
    if (!text.ok()) return text.status();
    for (absl::string_view line : absl::StrSplit(*text, '\n')) {
      line = absl::StripAsciiWhitespace(line);
      if (!line.empty() && line.front() != '#') {
        key = std::string(line);
        break;
      }
    }
    if (key.empty()) return absl::InvalidArgumentError(absl::StrCat(flag, ": no key in the file"));
  }
  for (char c : key) {
    if (c <= 0x20 || c >= 0x7f) {
      return absl::InvalidArgumentError(absl::StrCat(flag, ": a key is printable ASCII without spaces"));
    }
  }
  return key;
}

// Adds "authorization: Bearer <key>" to every call's initial metadata. (Call credentials would
// do the same over TLS only; gRPC does not send them over plaintext.)
class AuthorizationInterceptor : public grpc::experimental::Interceptor {
 public:
  explicit AuthorizationInterceptor(std::string value) : value_(std::move(value)) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->insert({"authorization", value_});
    }
    methods->Proceed();
  }

 private:
  const std::string value_;
};

class AuthorizationInterceptorFactory : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit AuthorizationInterceptorFactory(std::string key) : value_(absl::StrCat("Bearer ", key)) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(grpc::experimental::ClientRpcInfo*) override {
    return new AuthorizationInterceptor(value_);
  }

 private:
  const std::string value_;
};

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::Channel>> CreateClientChannel(const std::string& target,
                                                                   const ClientSecurity& security,
                                                                   const grpc::ChannelArguments& args) {
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (security.UsesTls()) {
    if (security.tls_cert_file.empty() != security.tls_key_file.empty()) {
      return absl::InvalidArgumentError(
          security.tls_key_file.empty() ? "--tls-cert needs --tls-key (the client certificate's private key)"
                                        : "--tls-key needs --tls-cert (the client certificate)");
    }
    grpc::SslCredentialsOptions ssl;
    const std::pair<const char*, const std::string*> files[] = {{"--tls-ca", &security.tls_ca_file},
                                                                {"--tls-cert", &security.tls_cert_file},
                                                                {"--tls-key", &security.tls_key_file}};
    std::string* targets[] = {&ssl.pem_root_certs, &ssl.pem_cert_chain, &ssl.pem_private_key};
    for (int i = 0; i < 3; ++i) {
      if (files[i].second->empty()) continue;
      absl::StatusOr<std::string> pem = ReadFlagFile(files[i].first, *files[i].second);
      if (!pem.ok()) return pem.status();
      if (pem->find("-----BEGIN") == std::string::npos) {
        return absl::InvalidArgumentError(
            absl::StrCat(files[i].first, " ", *files[i].second, ": not a PEM file (no -----BEGIN line)"));
      }
      *targets[i] = *std::move(pem);
    }
    credentials = grpc::SslCredentials(ssl);
  } else if (!security.tls_key_file.empty()) {
    return absl::InvalidArgumentError("--tls-key needs --tls-cert (the client certificate)");
  }
  absl::StatusOr<std::string> key = ApiKey(security);
  if (!key.ok()) return key.status();
  if (key->empty()) return grpc::CreateCustomChannel(target, credentials, args);
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(std::make_unique<AuthorizationInterceptorFactory>(*key));
  return grpc::experimental::CreateCustomChannelWithInterceptors(target, credentials, args,
                                                                 std::move(interceptors));
}

}  // namespace gsa
