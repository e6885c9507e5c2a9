// Security of gsa-server's gRPC port: TLS (optionally mutual) from PEM files, and API keys that
// clients present as `authorization: Bearer <key>` metadata on every gsa.v1.Generation call.
//
// TLS covers the whole port (health and reflection included). API keys are checked by the
// Generation service itself (GenerationService calls ApiKeys::Check first in each RPC), not by a
// grpc::AuthMetadataProcessor: that hook exists only on TLS credentials and would also gate
// grpc.health.v1.Health, which Kubernetes probes call without a token. Health and reflection stay
// open.
//
// Thread-safety: ApiKeys is immutable after Load; Check may be called from any thread.
#pragma once

#include <array>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <grpcpp/security/server_credentials.h>
#include <grpcpp/support/status.h>
#include <grpcpp/support/string_ref.h>

#include "absl/status/statusor.h"
#include "server/server_options.h"

namespace gsa {

// The accepted API keys (only their SHA-256 digests are kept).
class ApiKeys {
 public:
  // Reads `path` (--api-key-file): one key a line; surrounding whitespace, blank lines and lines
  // starting with '#' are ignored. A key is printable ASCII without spaces (it travels in HTTP/2
  // metadata). Errors name the flag, the file and the line: unreadable, no keys, a bad key.
  static absl::StatusOr<ApiKeys> Load(const std::string& path);
  // The same rules over text already in memory; `source` names it in errors.
  static absl::StatusOr<ApiKeys> Parse(std::string_view text, const std::string& source);

  // Whether `key` is one of the keys. The time taken does not depend on which key matched, or on
  // how much of a key a wrong guess shares (digests are compared in constant time).
  bool Contains(std::string_view key) const;

  // OK when the call's metadata has `authorization: Bearer <key>` with a known key ("Bearer" in any
  // case); otherwise UNAUTHENTICATED with a message saying what is expected.
  grpc::Status Check(const std::multimap<grpc::string_ref, grpc::string_ref>& client_metadata) const;

  size_t size() const { return digests_.size(); }

 private:
  using Digest = std::array<unsigned char, 32>;
  std::vector<Digest> digests_;
};

// What GsaServer::Start needs to secure its port.
struct ServerSecurity {
  std::shared_ptr<grpc::ServerCredentials> credentials;  // SSL, or insecure without --tls-cert
  std::unique_ptr<ApiKeys> api_keys;                     // null: no --api-key-file, no checks
};

// Reads and checks every security file of `options` before anything starts: the certificate chain
// parses, the private key parses (unencrypted) and matches the chain's first certificate, the
// client CA parses; --tls-cert and --tls-key come together; --tls-client-ca needs them. Errors are
// InvalidArgument naming the flag, the file and what is wrong with it.
absl::StatusOr<ServerSecurity> LoadServerSecurity(const ServerOptions& options);

}  // namespace gsa
