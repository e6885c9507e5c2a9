// The security and limits of gsa-server's port, in process on an ephemeral loopback port: TLS and
// mutual TLS with certificates made for the test by the `openssl` command (a throwaway CA, a
// server certificate for localhost and 127.0.0.1, client certificates from that CA and from
// another), startup errors for bad files that name the flag, API keys (health stays open),
// --max-prompt-tokens, --max-request-bytes and --max-concurrent-streams; and the clients' channel.
#include <grpcpp/grpcpp.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "clients/client_channel.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gsa/v1/generation.grpc.pb.h"
#include "server/security.h"
#include "server/server.h"
#include "tests/testing/test_support.h"

namespace gsa {
namespace {

using ::testing::HasSubstr;
using namespace std::chrono_literals;

// openssl's configuration for the test PKI: the extensions of a CA, a server and a client
// certificate.
constexpr char kOpensslConfig[] = R"([req]
distinguished_name = dn
[dn]
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
[client_ext]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
)";

class SecurityTest : public ::testing::Test {
 protected:
  // Two CAs (a: the server's and the trusted clients', b: another), a server certificate from a,
  // client certificates from a and b. P-256 keys: quick to make.
  static void SetUpTestSuite() {
    dir_ = std::make_unique<gsa::testing::TempDir>();
    if (std::system("command -v openssl >/dev/null 2>&1") != 0) {
      pki_error_ = "the openssl command is missing: install it (deploy/install-deps.sh lists it)";
      return;
    }
    gsa::testing::WriteFile(dir_->File("openssl.cnf"), kOpensslConfig);
    const std::string newkey = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -config openssl.cnf";
    std::vector<std::string> steps;
    for (const char* ca : {"ca_a", "ca_b"}) {
      steps.push_back(absl::StrCat("openssl req -x509 -new ", newkey, " -keyout ", ca, ".key -out ", ca,
                                   ".pem -days 2 -subj /CN=gsa-test-", ca, " -extensions ca_ext"));
    }
    int serial = 1;
    auto issue = [&](const std::string& name, const std::string& ca, const std::string& cn, const char* ext) {
      steps.push_back(absl::StrCat("openssl req -new ", newkey, " -keyout ", name, ".key -out ", name,
                                   ".csr -subj /CN=", cn));
      steps.push_back(absl::StrCat("openssl x509 -req -in ", name, ".csr -CA ", ca, ".pem -CAkey ", ca,
                                   ".key -set_serial ", serial++, " -days 2 -out ", name,
                                   ".pem -extfile openssl.cnf -extensions ", ext));
    };
    issue("server", "ca_a", "localhost", "server_ext");
    issue("client_a", "ca_a", "gsa-test-client-a", "client_ext");
    issue("client_b", "ca_b", "gsa-test-client-b", "client_ext");
    for (const std::string& step : steps) {
      const std::string cmd = absl::StrCat("cd '", dir_->path(), "' && ", step, " >>openssl.log 2>&1");
      if (std::system(cmd.c_str()) != 0) {
        pki_error_ =
            absl::StrCat("openssl failed: ", step, "\n", gsa::testing::ReadFile(dir_->File("openssl.log")));
        return;
      }
    }
  }
  static void TearDownTestSuite() { dir_.reset(); }

  void SetUp() override { ASSERT_TRUE(pki_error_.empty()) << pki_error_; }

  static std::string File(const std::string& name) { return dir_->File(name); }

  static ServerOptions Options() {
    ServerOptions o;
    o.model_dir = gsa::testing::GoldenDir("gsa-tiny");
    o.port = 0;
    o.cpu_threads = 2;
    o.engine.block_size = 8;
    o.engine.max_cache_tokens = 8 * 256;
    o.engine.max_model_len = 512;
    return o;
  }
  static ServerOptions TlsOptions() {
    ServerOptions o = Options();
    o.tls_cert_file = File("server.pem");
    o.tls_key_file = File("server.key");
    return o;
  }

  void StartServer(const ServerOptions& o) {
    absl::StatusOr<std::unique_ptr<GsaServer>> s = GsaServer::Start(o);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(*s);
  }
  // The error GsaServer::Start gives for `o` (which must fail).
  static std::string StartError(const ServerOptions& o) {
    absl::StatusOr<std::unique_ptr<GsaServer>> s = GsaServer::Start(o);
    EXPECT_FALSE(s.ok());
    return s.ok() ? "" : std::string(s.status().message());
  }

  // A fresh connection (own subchannel pool: nothing is shared between the clients of a test).
  std::shared_ptr<grpc::Channel> Channel(const ClientSecurity& security) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    absl::StatusOr<std::shared_ptr<grpc::Channel>> c =
        CreateClientChannel(server_->address(), security, args);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *c : nullptr;
  }
  static ClientSecurity TrustingCa(const std::string& ca) {
    ClientSecurity s;
    s.tls_ca_file = File(ca + ".pem");
    return s;
  }

  static v1::GenerateRequest Ids(int n, int max_tokens = 2) {
    v1::GenerateRequest r;
    for (int i = 0; i < n; ++i) r.mutable_token_ids()->add_ids(5 + i % 100);
    r.mutable_stopping()->set_max_tokens(max_tokens);
    r.mutable_stopping()->set_ignore_eos(true);
    r.mutable_sampling()->set_temperature(0);
    return r;
  }
  static grpc::Status Complete(const std::shared_ptr<grpc::Channel>& channel, const v1::GenerateRequest& r,
                               std::chrono::milliseconds timeout = 20000ms) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + timeout);
    v1::GenerateResponse resp;
    return v1::Generation::NewStub(channel)->Complete(&ctx, r, &resp);
  }
  static grpc::Status ModelInfo(const std::shared_ptr<grpc::Channel>& channel) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 20s);
    v1::ModelInfo info;
    return v1::Generation::NewStub(channel)->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info);
  }
  static grpc::Status HealthCheck(const std::shared_ptr<grpc::Channel>& channel) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 20s);
    grpc::health::v1::HealthCheckResponse resp;
    grpc::Status s = grpc::health::v1::Health::NewStub(channel)->Check(
        &ctx, grpc::health::v1::HealthCheckRequest(), &resp);
    if (s.ok() && resp.status() != grpc::health::v1::HealthCheckResponse::SERVING) {
      return grpc::Status(grpc::StatusCode::UNKNOWN, "not SERVING");
    }
    return s;
  }

  static inline std::unique_ptr<gsa::testing::TempDir> dir_;
  static inline std::string pki_error_;
  std::unique_ptr<GsaServer> server_;
};

// ---- TLS -----------------------------------------------------------------------------------------

TEST_F(SecurityTest, TlsClientTrustingTheServersCaIsServed) {
  StartServer(TlsOptions());
  auto channel = Channel(TrustingCa("ca_a"));
  grpc::Status s = Complete(channel, Ids(4));
  EXPECT_TRUE(s.ok()) << s.error_code() << " " << s.error_message();
  EXPECT_TRUE(HealthCheck(channel).ok());
}

TEST_F(SecurityTest, TlsClientTrustingAnotherCaCannotConnect) {
  StartServer(TlsOptions());
  grpc::Status s = Complete(Channel(TrustingCa("ca_b")), Ids(4));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
}

TEST_F(SecurityTest, PlaintextClientCannotTalkToATlsServer) {
  StartServer(TlsOptions());
  auto channel = Channel(ClientSecurity{});
  grpc::Status s = Complete(channel, Ids(4));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
  EXPECT_FALSE(HealthCheck(channel).ok());
}

TEST_F(SecurityTest, MutualTlsRefusesAClientWithoutACertificate) {
  ServerOptions o = TlsOptions();
  o.tls_client_ca_file = File("ca_a.pem");
  StartServer(o);
  grpc::Status s = Complete(Channel(TrustingCa("ca_a")), Ids(4));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
}

TEST_F(SecurityTest, MutualTlsServesAClientCertificateFromTheTrustedCa) {
  ServerOptions o = TlsOptions();
  o.tls_client_ca_file = File("ca_a.pem");
  StartServer(o);
  ClientSecurity c = TrustingCa("ca_a");
  c.tls_cert_file = File("client_a.pem");
  c.tls_key_file = File("client_a.key");
  grpc::Status s = Complete(Channel(c), Ids(4));
  EXPECT_TRUE(s.ok()) << s.error_code() << " " << s.error_message();
}

TEST_F(SecurityTest, MutualTlsRefusesAClientCertificateFromAnotherCa) {
  ServerOptions o = TlsOptions();
  o.tls_client_ca_file = File("ca_a.pem");
  StartServer(o);
  ClientSecurity c = TrustingCa("ca_a");
  c.tls_cert_file = File("client_b.pem");
  c.tls_key_file = File("client_b.key");
  grpc::Status s = Complete(Channel(c), Ids(4));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
}

// ---- Startup errors: each names the flag and the file --------------------------------------------

TEST_F(SecurityTest, CertificateAndKeyComeTogether) {
  ServerOptions o = Options();
  o.tls_cert_file = File("server.pem");
  EXPECT_THAT(StartError(o), HasSubstr("--tls-cert needs --tls-key"));
  o = Options();
  o.tls_key_file = File("server.key");
  EXPECT_THAT(StartError(o), HasSubstr("--tls-key needs --tls-cert"));
  o = Options();
  o.tls_client_ca_file = File("ca_a.pem");
  EXPECT_THAT(StartError(o), HasSubstr("--tls-client-ca needs --tls-cert and --tls-key"));
}

TEST_F(SecurityTest, MissingTlsFilesAreNamed) {
  ServerOptions o = TlsOptions();
  o.tls_cert_file = File("no-such-cert.pem");
  std::string e = StartError(o);
  EXPECT_THAT(e, HasSubstr("--tls-cert " + File("no-such-cert.pem") + ": cannot read"));
  EXPECT_THAT(e, HasSubstr("No such file"));
  o = TlsOptions();
  o.tls_key_file = File("no-such-key.pem");
  EXPECT_THAT(StartError(o), HasSubstr("--tls-key " + File("no-such-key.pem") + ": cannot read"));
  o = TlsOptions();
  o.tls_client_ca_file = File("no-such-ca.pem");
  EXPECT_THAT(StartError(o), HasSubstr("--tls-client-ca " + File("no-such-ca.pem") + ": cannot read"));
}

TEST_F(SecurityTest, InvalidTlsFilesAreNamedWithWhatIsWrong) {
  gsa::testing::WriteFile(File("garbage.pem"), "this is not a certificate\n");
  const std::string cert = gsa::testing::ReadFile(File("server.pem"));
  std::string broken = cert;
  broken[broken.find('\n') + 10] = '*';  // a character outside base64 inside the block
  gsa::testing::WriteFile(File("broken.pem"), broken);

  ServerOptions o = TlsOptions();
  o.tls_cert_file = File("garbage.pem");
  EXPECT_THAT(StartError(o), HasSubstr("--tls-cert " + File("garbage.pem") + ": no PEM certificate"));
  o.tls_cert_file = File("broken.pem");
  EXPECT_THAT(StartError(o),
              HasSubstr("--tls-cert " + File("broken.pem") + ": certificate 1 is not a valid"));
  o.tls_cert_file = File("server.key");  // a key where the certificate belongs
  EXPECT_THAT(StartError(o), HasSubstr("--tls-cert " + File("server.key") + ": no PEM certificate"));

  o = TlsOptions();
  o.tls_key_file = File("server.pem");  // a certificate where the key belongs
  EXPECT_THAT(StartError(o), HasSubstr("--tls-key " + File("server.pem") + ": no PEM private key"));
  o.tls_key_file = File("client_a.key");  // a valid key, of another certificate
  EXPECT_THAT(StartError(o), HasSubstr("--tls-key " + File("client_a.key") +
                                       ": the key does not match the certificate in --tls-cert"));

  o = TlsOptions();
  o.tls_client_ca_file = File("garbage.pem");
  EXPECT_THAT(StartError(o), HasSubstr("--tls-client-ca " + File("garbage.pem") + ": no PEM certificate"));
}

TEST_F(SecurityTest, BadApiKeyFilesAreNamed) {
  ServerOptions o = Options();
  o.api_key_file = File("no-such-keys");
  EXPECT_THAT(StartError(o), HasSubstr("--api-key-file " + File("no-such-keys") + ": cannot read"));
  gsa::testing::WriteFile(File("empty-keys"), "");
  o.api_key_file = File("empty-keys");
  EXPECT_THAT(StartError(o), HasSubstr("--api-key-file " + File("empty-keys") + ": no API keys"));
  gsa::testing::WriteFile(File("comment-keys"), "# only a comment\n\n   \n");
  o.api_key_file = File("comment-keys");
  EXPECT_THAT(StartError(o), HasSubstr("no API keys"));
  gsa::testing::WriteFile(File("spaced-keys"), "good-key\nbad key\n");
  o.api_key_file = File("spaced-keys");
  std::string e = StartError(o);
  EXPECT_THAT(e, HasSubstr("line 2: a key must be printable ASCII without spaces"));
  EXPECT_THAT(e, ::testing::Not(HasSubstr("bad key")));  // keys never appear in messages
}

// ---- API keys ------------------------------------------------------------------------------------

class ApiKeyTest : public SecurityTest {
 protected:
  void SetUp() override {
    SecurityTest::SetUp();
    gsa::testing::WriteFile(File("keys"), "# production keys\nsecret-one\n\n  secret-two  \n");
    ServerOptions o = Options();
    o.api_key_file = File("keys");
    StartServer(o);
  }
  std::shared_ptr<grpc::Channel> WithKey(const std::string& key) {
    ClientSecurity c;
    c.api_key = key;
    return Channel(c);
  }
};

TEST_F(ApiKeyTest, CallWithoutAKeyIsUnauthenticated) {
  grpc::Status s = Complete(Channel(ClientSecurity{}), Ids(4));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(s.error_message(), HasSubstr("missing API key"));
  EXPECT_THAT(s.error_message(), HasSubstr("authorization: Bearer <key>"));
  EXPECT_EQ(ModelInfo(Channel(ClientSecurity{})).error_code(), grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(ApiKeyTest, CallWithAWrongKeyIsUnauthenticated) {
  grpc::Status s = Complete(WithKey("secret-three"), Ids(4));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(s.error_message(), HasSubstr("invalid API key"));
  EXPECT_EQ(Complete(WithKey("secret-on"), Ids(4)).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(Complete(WithKey("secret-one1"), Ids(4)).error_code(), grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(ApiKeyTest, AuthorizationThatIsNotBearerIsUnauthenticated) {
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", "Basic secret-one");
  v1::GenerateResponse resp;
  grpc::Status s = v1::Generation::NewStub(Channel(ClientSecurity{}))->Complete(&ctx, Ids(4), &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(s.error_message(), HasSubstr("not \"Bearer <key>\""));
}

TEST_F(ApiKeyTest, CallWithAnyListedKeyIsServed) {
  for (const char* key : {"secret-one", "secret-two"}) {
    grpc::Status s = Complete(WithKey(key), Ids(4));
    EXPECT_TRUE(s.ok()) << key << ": " << s.error_message();
  }
  EXPECT_TRUE(ModelInfo(WithKey("secret-two")).ok());
  // The streaming call too, and "bearer" in any case.
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", "bearer secret-one");
  auto reader = v1::Generation::NewStub(Channel(ClientSecurity{}))->Generate(&ctx, Ids(4));
  v1::GenerateResponse m;
  while (reader->Read(&m)) {
  }
  EXPECT_TRUE(reader->Finish().ok());
}

TEST_F(ApiKeyTest, HealthNeedsNoKey) { EXPECT_TRUE(HealthCheck(Channel(ClientSecurity{})).ok()); }

TEST_F(SecurityTest, ApiKeyOverTlsIsServed) {
  gsa::testing::WriteFile(File("tls-keys"), "tls-secret\n");
  ServerOptions o = TlsOptions();
  o.api_key_file = File("tls-keys");
  StartServer(o);
  ClientSecurity c = TrustingCa("ca_a");
  EXPECT_EQ(Complete(Channel(c), Ids(4)).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  gsa::testing::WriteFile(File("client-key"), "# mine\ntls-secret\n");
  c.api_key_file = File("client-key");
  grpc::Status s = Complete(Channel(c), Ids(4));
  EXPECT_TRUE(s.ok()) << s.error_message();
}

TEST(ApiKeysTest, ParseSkipsCommentsAndBlankLinesAndMatchesExactly) {
  absl::StatusOr<ApiKeys> keys = ApiKeys::Parse("# a comment\n\n  alpha \r\nbeta\n#gamma\n", "test");
  ASSERT_TRUE(keys.ok()) << keys.status();
  EXPECT_EQ(keys->size(), 2u);
  EXPECT_TRUE(keys->Contains("alpha"));
  EXPECT_TRUE(keys->Contains("beta"));
  EXPECT_FALSE(keys->Contains("gamma"));
  EXPECT_FALSE(keys->Contains("#gamma"));
  EXPECT_FALSE(keys->Contains("alph"));
  EXPECT_FALSE(keys->Contains("alphaa"));
  EXPECT_FALSE(keys->Contains(""));
}

// ---- Limits --------------------------------------------------------------------------------------

TEST_F(SecurityTest, PromptsOverMaxPromptTokensAreRefused) {
  ServerOptions o = Options();
  o.max_prompt_tokens = 8;
  StartServer(o);
  auto channel = Channel(ClientSecurity{});
  EXPECT_TRUE(Complete(channel, Ids(8)).ok());
  grpc::Status s = Complete(channel, Ids(9));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("9 tokens"));
  EXPECT_THAT(s.error_message(), HasSubstr("limit of 8 (--max-prompt-tokens)"));
}

TEST_F(SecurityTest, MaxPromptTokensDefaultsToMaxModelLen) {
  StartServer(Options());  // max_model_len 512
  grpc::Status s = Complete(Channel(ClientSecurity{}), Ids(513));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("limit of 512 (--max-prompt-tokens)"));
}

TEST_F(SecurityTest, RequestsOverMaxRequestBytesAreResourceExhausted) {
  ServerOptions o = Options();
  o.max_request_bytes = 1024;
  StartServer(o);
  auto channel = Channel(ClientSecurity{});
  EXPECT_TRUE(Complete(channel, Ids(8)).ok());
  grpc::Status s = Complete(channel, Ids(3000));  // about 3 KB of token ids
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
}

TEST_F(SecurityTest, MaxConcurrentStreamsLimitsCallsPerConnection) {
  ServerOptions o = Options();
  o.max_concurrent_streams = 1;
  StartServer(o);
  auto channel = Channel(ClientSecurity{});
  // A health Watch stays open: it holds the connection's only stream.
  grpc::ClientContext watch_ctx;
  auto watch =
      grpc::health::v1::Health::NewStub(channel)->Watch(&watch_ctx, grpc::health::v1::HealthCheckRequest());
  grpc::health::v1::HealthCheckResponse first;
  ASSERT_TRUE(watch->Read(&first));
  EXPECT_EQ(Complete(channel, Ids(4), 500ms).error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(Complete(Channel(ClientSecurity{}), Ids(4)).ok());  // another connection is served
  watch_ctx.TryCancel();
  (void)watch->Finish();
  EXPECT_TRUE(Complete(channel, Ids(4)).ok());
}

TEST(ServerFlagsTest, SecurityAndLimitFlagsParse) {
  absl::StatusOr<ServerOptions> o = ParseServerFlags(
      {"--tls-cert", "c.pem", "--tls-key=k.pem", "--tls-client-ca", "ca.pem", "--api-key-file", "keys",
       "--max-request-bytes", "1000", "--max-prompt-tokens", "100", "--max-concurrent-streams", "4"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->tls_cert_file, "c.pem");
  EXPECT_EQ(o->tls_key_file, "k.pem");
  EXPECT_EQ(o->tls_client_ca_file, "ca.pem");
  EXPECT_EQ(o->api_key_file, "keys");
  EXPECT_EQ(o->max_request_bytes, 1000);
  EXPECT_EQ(o->max_prompt_tokens, 100);
  EXPECT_EQ(o->max_concurrent_streams, 4);

  const ServerOptions d;
  EXPECT_EQ(d.max_request_bytes, 64 << 20);
  EXPECT_EQ(d.max_prompt_tokens, 0);  // max_model_len
  EXPECT_EQ(d.max_concurrent_streams, 128);
  EXPECT_TRUE(d.tls_cert_file.empty());

  for (const std::vector<std::string>& bad : {std::vector<std::string>{"--max-request-bytes", "0"},
                                              {"--max-request-bytes", "4294967296"},
                                              {"--max-prompt-tokens", "0"},
                                              {"--max-concurrent-streams", "0"},
                                              {"--tls-cert"},
                                              {"--tls-key", ""}}) {
    absl::StatusOr<ServerOptions> r = ParseServerFlags(bad);
    EXPECT_FALSE(r.ok()) << bad[0];
    if (!r.ok()) {
      EXPECT_THAT(std::string(r.status().message()), HasSubstr(bad[0]));
    }
  }
}

// ---- The clients' channel ------------------------------------------------------------------------

TEST_F(SecurityTest, ClientChannelRefusesUnusableSettingsNamingTheFlag) {
  auto error = [](const ClientSecurity& c) {
    absl::StatusOr<std::shared_ptr<grpc::Channel>> ch = CreateClientChannel("127.0.0.1:1", c);
    EXPECT_FALSE(ch.ok());
    return ch.ok() ? "" : std::string(ch.status().message());
  };
  ClientSecurity c;
  c.tls_cert_file = File("client_a.pem");
  EXPECT_THAT(error(c), HasSubstr("--tls-cert needs --tls-key"));
  c = ClientSecurity{};
  c.tls_key_file = File("client_a.key");
  EXPECT_THAT(error(c), HasSubstr("--tls-key needs --tls-cert"));
  c = ClientSecurity{};
  c.tls_ca_file = File("no-such-ca.pem");
  EXPECT_THAT(error(c), HasSubstr("--tls-ca " + File("no-such-ca.pem") + ": cannot read"));
  c = ClientSecurity{};
  c.api_key = "a";
  c.api_key_file = File("keys");
  EXPECT_THAT(error(c), HasSubstr("--api-key or --api-key-file, not both"));
  c = ClientSecurity{};
  c.api_key = "with space";
  EXPECT_THAT(error(c), HasSubstr("--api-key: a key is printable ASCII"));
}

}  // namespace
}  // namespace gsa
