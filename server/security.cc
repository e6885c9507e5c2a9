#include "server/security.h"

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace gsa {
namespace {

// Messages name the flag and the file: "--tls-cert /etc/gsa/cert.pem: ...".
absl::Status FileError(const std::string& flag, const std::string& path, std::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(flag, " ", path, ": ", std::string(what)));
}

absl::StatusOr<std::string> ReadWholeFile(const std::string& flag, const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    return FileError(flag, path, "is a directory, expected a file");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return FileError(flag, path, absl::StrCat("cannot read (", std::strerror(errno), ")"));
  std::ostringstream s;
  s << in.rdbuf();
  if (in.bad()) return FileError(flag, path, "read error");
  return s.str();
}

// OpenSSL's most recent error reason, for messages ("bad base64 decode"); clears the queue.
std::string OpenSslReason() {
  const unsigned long e = ERR_peek_last_error();
  ERR_clear_error();
  if (e == 0) return "";
  const char* reason = ERR_reason_error_string(e);
  return reason != nullptr ? absl::StrCat(" (", reason, ")") : "";
}

struct BioDeleter {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Deleter {
  void operator()(X509* x) const { X509_free(x); }
};
struct KeyDeleter {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using BioPtr = std::unique_ptr<BIO, BioDeleter>;
using X509Ptr = std::unique_ptr<X509, X509Deleter>;
using KeyPtr = std::unique_ptr<EVP_PKEY, KeyDeleter>;

BioPtr MemoryBio(const std::string& pem) {
  return BioPtr(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

// A password callback that refuses: an encrypted key fails to load instead of prompting on the
// terminal.
int NoPassword(char*, int, int, void*) { return 0; }

// Every PEM certificate in `pem`, in order. An error when there is none or one does not parse.
absl::StatusOr<std::vector<X509Ptr>> ParseCertificates(const std::string& flag, const std::string& path,
                                                       const std::string& pem) {
  ERR_clear_error();
  std::vector<X509Ptr> certs;
  BioPtr bio = MemoryBio(pem);
  for (;;) {
    X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, NoPassword, nullptr));
    if (cert == nullptr) break;
    certs.push_back(std::move(cert));
  }
  // Running out of PEM blocks ends the loop with "no start line"; anything else is a broken block.
  const unsigned long e = ERR_peek_last_error();
  const bool clean_end =
      e == 0 || (ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE);
  if (!clean_end) {
    return FileError(flag, path,
                     absl::StrCat("certificate ", certs.size() + 1, " is not a valid PEM X.509 certificate",
                                  OpenSslReason()));
  }
  ERR_clear_error();
  if (certs.empty()) {
    return FileError(flag, path,
                     "no PEM certificate in the file (expected a -----BEGIN CERTIFICATE----- block)");
  }
  return certs;
}

absl::StatusOr<KeyPtr> ParsePrivateKey(const std::string& flag, const std::string& path,
                                       const std::string& pem) {
  if (pem.find("-----BEGIN") == std::string::npos || pem.find("PRIVATE KEY-----") == std::string::npos) {
    return FileError(flag, path,
                     "no PEM private key in the file (expected a -----BEGIN PRIVATE KEY----- block)");
  }
  if (pem.find("ENCRYPTED") != std::string::npos) {
    return FileError(flag, path, "the private key is encrypted; give an unencrypted PEM key");
  }
  ERR_clear_error();
  BioPtr bio = MemoryBio(pem);
  KeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, NoPassword, nullptr));
  if (key == nullptr) {
    return FileError(flag, path, absl::StrCat("the private key does not parse", OpenSslReason()));
  }
  return key;
}

std::string SubjectOf(X509* cert) {
  char buf[256];
  X509_NAME_oneline(X509_get_subject_name(cert), buf, sizeof buf);
  return buf;
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeCredentials(const ServerOptions& o) {
  const bool cert = !o.tls_cert_file.empty(), key = !o.tls_key_file.empty(),
             ca = !o.tls_client_ca_file.empty();
  if (!cert && !key && !ca) return grpc::InsecureServerCredentials();
  if (cert != key) {
    return absl::InvalidArgumentError(
        cert ? "--tls-cert needs --tls-key (the certificate's private key)"
             : "--tls-key needs --tls-cert (the certificate chain it belongs to)");
  }
  if (ca && !cert) {
    return absl::InvalidArgumentError(
        "--tls-client-ca needs --tls-cert and --tls-key: client certificates are checked over TLS only");
  }

  absl::StatusOr<std::string> chain_pem = ReadWholeFile("--tls-cert", o.tls_cert_file);
  if (!chain_pem.ok()) return chain_pem.status();
  absl::StatusOr<std::vector<X509Ptr>> chain = ParseCertificates("--tls-cert", o.tls_cert_file, *chain_pem);
  if (!chain.ok()) return chain.status();
  absl::StatusOr<std::string> key_pem = ReadWholeFile("--tls-key", o.tls_key_file);
  if (!key_pem.ok()) return key_pem.status();
  absl::StatusOr<KeyPtr> private_key = ParsePrivateKey("--tls-key", o.tls_key_file, *key_pem);
  if (!private_key.ok()) return private_key.status();
  if (X509_check_private_key(chain->front().get(), private_key->get()) != 1) {
    ERR_clear_error();
    return FileError("--tls-key", o.tls_key_file,
                     absl::StrCat("the key does not match the certificate in --tls-cert ", o.tls_cert_file,
                                  " (subject ", SubjectOf(chain->front().get()), ")"));
  }

  grpc::SslServerCredentialsOptions ssl(ca ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                                           : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  ssl.pem_key_cert_pairs.push_back({*key_pem, *chain_pem});
  if (ca) {
    absl::StatusOr<std::string> ca_pem = ReadWholeFile("--tls-client-ca", o.tls_client_ca_file);
    if (!ca_pem.ok()) return ca_pem.status();
    absl::StatusOr<std::vector<X509Ptr>> roots =
        ParseCertificates("--tls-client-ca", o.tls_client_ca_file, *ca_pem);
    if (!roots.ok()) return roots.status();
    ssl.pem_root_certs = *ca_pem;
  }
  return grpc::SslServerCredentials(ssl);
}

using Digest = std::array<unsigned char, 32>;

Digest Sha256(std::string_view s) {
  Digest d;
  SHA256(reinterpret_cast<const unsigned char*>(s.data()), s.size(), d.data());
  return d;
}

bool IsKeyChar(char c) { return c > 0x20 && c < 0x7f; }

// The token of an "authorization" value "Bearer <token>" ("Bearer" in any case); empty if the value
// is not of that form.
std::string_view BearerToken(std::string_view value) {
  constexpr std::string_view kScheme = "bearer ";
  if (value.size() <= kScheme.size()) return {};
  for (size_t i = 0; i < kScheme.size(); ++i) {
    if (absl::ascii_tolower(static_cast<unsigned char>(value[i])) != kScheme[i]) return {};
  }
  value.remove_prefix(kScheme.size());
  while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
  while (!value.empty() && value.back() == ' ') value.remove_suffix(1);
  return value;
}

}  // namespace

absl::StatusOr<ApiKeys> ApiKeys::Load(const std::string& path) {
  absl::StatusOr<std::string> text = ReadWholeFile("--api-key-file", path);
  if (!text.ok()) return text.status();
  return Parse(*text, absl::StrCat("--api-key-file ", path));
}

absl::StatusOr<ApiKeys> ApiKeys::Parse(std::string_view text, const std::string& source) {
  ApiKeys keys;
  int line_number = 0;
  for (absl::string_view raw : absl::StrSplit(absl::string_view(text.data(), text.size()), '\n')) {
    ++line_number;
    const absl::string_view line = absl::StripAsciiWhitespace(raw);
    if (line.empty() || line.front() == '#') continue;
    for (char c : line) {
      if (!IsKeyChar(c)) {
        // Never echo the key itself: the message may end up in logs.
        return absl::InvalidArgumentError(absl::StrCat(source, ": line ", line_number,
                                                       ": a key must be printable ASCII without spaces (it "
                                                       "is sent as \"authorization: Bearer <key>\")"));
      }
    }
    keys.digests_.push_back(Sha256(std::string_view(line.data(), line.size())));
  }
  if (keys.digests_.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": no API keys (one a line; blank lines and lines starting with # are ignored)"));
  }
  return keys;
}

bool ApiKeys::Contains(std::string_view key) const {
  // Compare digests, not keys: equal lengths, and CRYPTO_memcmp takes the same time wherever they
  // differ. Every key is compared, so the time does not say which one matched either.
  const Digest d = Sha256(key);
  bool found = false;
  for (const Digest& k : digests_) found |= CRYPTO_memcmp(k.data(), d.data(), d.size()) == 0;
  return found;
}

grpc::Status ApiKeys::Check(const std::multimap<grpc::string_ref, grpc::string_ref>& client_metadata) const {
  constexpr char kExpected[] =
      "send metadata \"authorization: Bearer <key>\" with a key from the server's --api-key-file";
  auto [begin, end] = client_metadata.equal_range("authorization");
  if (begin == end) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, absl::StrCat("missing API key: ", kExpected));
  }
  bool bearer = false;
  for (auto it = begin; it != end; ++it) {
    const std::string_view token = BearerToken(std::string_view(it->second.data(), it->second.size()));
    if (token.empty()) continue;
    bearer = true;
    if (Contains(token)) return grpc::Status::OK;
  }
  return grpc::Status(
      grpc::StatusCode::UNAUTHENTICATED,
      absl::StrCat(bearer ? "invalid API key: " : "the authorization metadata is not \"Bearer <key>\": ",
                   kExpected));
}

absl::StatusOr<ServerSecurity> LoadServerSecurity(const ServerOptions& options) {
  ServerSecurity security;
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials = MakeCredentials(options);
  if (!credentials.ok()) return credentials.status();
  security.credentials = *std::move(credentials);
  if (!options.api_key_file.empty()) {
    absl::StatusOr<ApiKeys> keys = ApiKeys::Load(options.api_key_file);
    if (!keys.ok()) return keys.status();
    security.api_keys = std::make_unique<ApiKeys>(*std::move(keys));
  }
  return security;
}

}  // namespace gsa
