// How gsa-cli and gsa-bench reach a gsa-server: plaintext or TLS (with a client certificate for
// mutual TLS), and an optional API key sent as `authorization: Bearer <key>` on every call.
//
// Thread-safety: CreateClientChannel is pure apart from reading the files; the channel it returns
// is thread-safe like any grpc::Channel.
#pragma once

#include <memory>
#include <string>

#include <grpcpp/channel.h>
#include <grpcpp/support/channel_arguments.h>

#include "absl/status/statusor.h"

namespace gsa {

struct ClientSecurity {
  bool tls = false;           // TLS, verifying the server with the system's root CAs
  std::string tls_ca_file;    // PEM CA(s) that signed the server's certificate (implies TLS)
  std::string tls_cert_file;  // PEM client certificate for mutual TLS (implies TLS; needs the key)
  std::string tls_key_file;   // its PEM private key
  std::string api_key;        // sent as "authorization: Bearer <api_key>"
  std::string api_key_file;   // or: the first key of this file (blank lines and # comments skipped)

  bool UsesTls() const { return tls || !tls_ca_file.empty() || !tls_cert_file.empty(); }
};

// A channel to `target` with `security`'s credentials and key. InvalidArgument naming the flag
// (--tls-ca, --tls-cert, --tls-key, --api-key, --api-key-file) for an unreadable or empty file, a
// certificate without its key (or the reverse), both --api-key and --api-key-file, or a key that
// cannot travel in metadata (not printable ASCII, or spaces).
absl::StatusOr<std::shared_ptr<grpc::Channel>> CreateClientChannel(
    const std::string& target, const ClientSecurity& security,
    const grpc::ChannelArguments& args = grpc::ChannelArguments());

}  // namespace gsa
