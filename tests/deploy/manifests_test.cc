// The deployment files under deploy/ parse and say what serving gsa-server needs: every YAML file
// of deploy/k8s and deploy/envoy loads with a real YAML parser (yaml-cpp), the Kubernetes objects
// have the fields that matter (gRPC health probes on the serving port, one GPU, a grace period
// longer than the drain, Service ports, a PodDisruptionBudget and an autoscaler that select the
// server's pods), Envoy speaks HTTP/2 to health-checked replicas and retries only calls that never
// started, and the Dockerfile and nginx config (not YAML) say the essentials in text.
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace {

namespace fs = std::filesystem;

const fs::path kDeployDir = GSA_DEPLOY_DIR;
constexpr int kGrpcPort = 50051;
constexpr int kMetricsPort = 9090;

std::string ReadText(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// The node at a dotted path ("spec.template.spec"), or nothing when a step is missing or not a
// map. yaml-cpp throws when indexing past a missing key; this never does. (A YAML::Node is a
// reference: `a = b` would overwrite a's content, so the walk rebinds with reset.)
std::optional<YAML::Node> At(const YAML::Node& node, const std::string& path) {
  YAML::Node cur;
  cur.reset(node);
  std::stringstream parts(path);
  std::string key;
  while (std::getline(parts, key, '.')) {
    if (!cur.IsMap() || !cur[key]) return std::nullopt;
    const YAML::Node next = cur[key];
    cur.reset(next);
  }
  return cur;
}

// The sequence at a dotted path (by value, so a range-for over it is safe), or an empty one.
YAML::Node Seq(const YAML::Node& node, const std::string& path) {
  auto n = At(node, path);
  if (n && n->IsSequence()) return *n;
  ADD_FAILURE() << path << " is not a sequence";
  return YAML::Node(YAML::NodeType::Sequence);
}

std::string Str(const YAML::Node& node, const std::string& path) {
  auto n = At(node, path);
  return n && n->IsScalar() ? n->as<std::string>() : std::string();
}

std::vector<fs::path> YamlFilesUnder(const fs::path& dir) {
  std::vector<fs::path> out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    const std::string ext = e.path().extension().string();
    if (e.is_regular_file() && (ext == ".yaml" || ext == ".yml")) out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Every Kubernetes object of the files kustomization.yaml lists, keyed "Kind/name".
std::map<std::string, YAML::Node> KubernetesObjects() {
  std::map<std::string, YAML::Node> objects;
  const YAML::Node kustomization = YAML::LoadFile((kDeployDir / "k8s/kustomization.yaml").string());
  for (const auto& resource : kustomization["resources"]) {
    for (const YAML::Node& doc : YAML::LoadAllFromFile((kDeployDir / "k8s" / resource.as<std::string>()).string())) {
      objects.emplace(Str(doc, "kind") + "/" + Str(doc, "metadata.name"), doc);
    }
  }
  return objects;
}

YAML::Node Object(const std::string& key) {
  static const std::map<std::string, YAML::Node> objects = KubernetesObjects();
  auto it = objects.find(key);
  if (it == objects.end()) {
    ADD_FAILURE() << key << " is not among the objects of deploy/k8s/kustomization.yaml's resources";
    return YAML::Node();
  }
  return it->second;
}

YAML::Node Container(const YAML::Node& deployment, const std::string& name) {
  auto containers = At(deployment, "spec.template.spec.containers");
  if (containers && containers->IsSequence()) {
    for (const auto& c : *containers) {
      if (Str(c, "name") == name) return c;
    }
  }
  ADD_FAILURE() << "no container " << name << " in " << Str(deployment, "metadata.name");
  return YAML::Node();
}

// The value of a flag in a container's args, as "--flag=value" or "--flag", "value".
std::optional<std::string> FlagValue(const YAML::Node& container, const std::string& flag) {
  std::vector<std::string> args;
  if (auto a = At(container, "args"); a && a->IsSequence()) {
    for (const auto& arg : *a) args.push_back(arg.as<std::string>());
  }
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i].rfind(flag + "=", 0) == 0) return args[i].substr(flag.size() + 1);
    if (args[i] == flag && i + 1 < args.size()) return args[i + 1];
  }
  return std::nullopt;
}

// Each matchLabels entry of `selector` is a label of `labels`.
void ExpectSelects(const YAML::Node& selector, const YAML::Node& labels, const std::string& what) {
  ASSERT_TRUE(selector.IsMap() && selector.size() > 0) << what << ": empty selector";
  for (const auto& kv : selector) {
    const std::string key = kv.first.as<std::string>();
    EXPECT_TRUE(labels[key] && labels[key].as<std::string>() == kv.second.as<std::string>())
        << what << ": selector " << key << "=" << kv.second.as<std::string>() << " matches no pod label";
  }
}

YAML::Node ServerPodLabels() {
  return *At(Object("Deployment/gsa-server"), "spec.template.metadata.labels");
}

YAML::Node EnvoyConfig() { return YAML::LoadFile((kDeployDir / "envoy/envoy.yaml").string()); }

YAML::Node EnvoyCluster(const std::string& name) {
  auto clusters = At(EnvoyConfig(), "static_resources.clusters");
  if (clusters && clusters->IsSequence()) {
    for (const auto& c : *clusters) {
      if (Str(c, "name") == name) return c;
    }
  }
  ADD_FAILURE() << "envoy.yaml has no cluster " << name;
  return YAML::Node();
}

// ---- every file parses ----------------------------------------------------------------------

TEST(ManifestsTest, EveryYamlFileUnderK8sAndEnvoyParses) {
  std::vector<fs::path> files = YamlFilesUnder(kDeployDir / "k8s");
  const std::vector<fs::path> envoy = YamlFilesUnder(kDeployDir / "envoy");
  files.insert(files.end(), envoy.begin(), envoy.end());
  ASSERT_GE(files.size(), 8u);
  for (const fs::path& f : files) {
    SCOPED_TRACE(f.string());
    std::vector<YAML::Node> docs;
    ASSERT_NO_THROW(docs = YAML::LoadAllFromFile(f.string()));
    ASSERT_FALSE(docs.empty());
    for (const YAML::Node& doc : docs) EXPECT_TRUE(doc.IsMap());
  }
}

TEST(ManifestsTest, KustomizationListsEveryKubernetesObjectFile) {
  const YAML::Node k = YAML::LoadFile((kDeployDir / "k8s/kustomization.yaml").string());
  std::set<std::string> listed;
  for (const auto& r : k["resources"]) listed.insert(r.as<std::string>());
  std::set<std::string> present;
  for (const auto& e : fs::directory_iterator(kDeployDir / "k8s")) {
    const std::string name = e.path().filename().string();
    if (e.is_regular_file() && e.path().extension() == ".yaml" && name != "kustomization.yaml") present.insert(name);
  }
  EXPECT_EQ(listed, present);
  for (const std::string& r : listed) {
    for (const YAML::Node& doc : YAML::LoadAllFromFile((kDeployDir / "k8s" / r).string())) {
      EXPECT_FALSE(Str(doc, "apiVersion").empty()) << r;
      EXPECT_FALSE(Str(doc, "kind").empty()) << r;
      EXPECT_FALSE(Str(doc, "metadata.name").empty()) << r;
    }
  }
}

// ---- the server Deployment ------------------------------------------------------------------

TEST(ManifestsTest, DeploymentProbesAreGrpcHealthChecksOnTheServingPort) {
  const YAML::Node c = Container(Object("Deployment/gsa-server"), "gsa-server");
  for (const std::string probe : {"readinessProbe", "livenessProbe", "startupProbe"}) {
    SCOPED_TRACE(probe);
    auto port = At(c, probe + ".grpc.port");
    ASSERT_TRUE(port.has_value()) << "a native grpc: probe with a port number";
    EXPECT_EQ(port->as<int>(), kGrpcPort);
    // The overall server status (service ""), the one gsa-server sets.
    EXPECT_EQ(Str(c, probe + ".grpc.service"), "");
    EXPECT_FALSE(At(c, probe + ".httpGet").has_value());
    EXPECT_FALSE(At(c, probe + ".exec").has_value());
  }
  EXPECT_EQ(At(c, "readinessProbe.failureThreshold")->as<int>(), 1)
      << "a draining replica leaves the endpoints at its first NOT_SERVING";
}

TEST(ManifestsTest, DeploymentServesGrpcAndMetricsPorts) {
  const YAML::Node c = Container(Object("Deployment/gsa-server"), "gsa-server");
  std::map<std::string, int> ports;
  for (const auto& p : c["ports"]) ports[Str(p, "name")] = p["containerPort"].as<int>();
  EXPECT_EQ(ports["grpc"], kGrpcPort);
  EXPECT_EQ(ports["metrics"], kMetricsPort);
  EXPECT_EQ(FlagValue(c, "--port").value_or("50051"), std::to_string(kGrpcPort));
  EXPECT_EQ(FlagValue(c, "--metrics-port").value_or("(none)"), std::to_string(kMetricsPort));
  EXPECT_TRUE(FlagValue(c, "--model").has_value()) << "the model from the volume";
}

TEST(ManifestsTest, DeploymentRequestsOneGpu) {
  const YAML::Node c = Container(Object("Deployment/gsa-server"), "gsa-server");
  auto limits = At(c, "resources.limits");
  ASSERT_TRUE(limits && (*limits)["nvidia.com/gpu"]) << "extended resources must be in limits";
  EXPECT_EQ((*limits)["nvidia.com/gpu"].as<int>(), 1);
  if (auto requests = At(c, "resources.requests"); requests && (*requests)["nvidia.com/gpu"]) {
    EXPECT_EQ((*requests)["nvidia.com/gpu"].as<int>(), 1);
  }
  EXPECT_TRUE(At(c, "resources.requests.cpu").has_value());
  EXPECT_TRUE(At(c, "resources.requests.memory").has_value());
  EXPECT_TRUE(At(c, "resources.limits.memory").has_value());
}

TEST(ManifestsTest, TerminationGracePeriodOutlastsTheDrain) {
  const YAML::Node d = Object("Deployment/gsa-server");
  auto grace = At(d, "spec.template.spec.terminationGracePeriodSeconds");
  ASSERT_TRUE(grace.has_value());
  const double drain = std::stod(FlagValue(Container(d, "gsa-server"), "--drain-timeout").value_or("30"));
  EXPECT_GT(grace->as<double>(), drain);
}

TEST(ManifestsTest, DeploymentRunsAsTheImagesNonRootUserWithTheModelVolumeReadOnly) {
  const YAML::Node d = Object("Deployment/gsa-server");
  EXPECT_TRUE(At(d, "spec.template.spec.securityContext.runAsNonRoot")->as<bool>());
  EXPECT_EQ(At(d, "spec.template.spec.securityContext.runAsUser")->as<int>(), 10001);
  ExpectSelects(*At(d, "spec.selector.matchLabels"), ServerPodLabels(), "Deployment selector");
  const YAML::Node c = Container(d, "gsa-server");
  bool mounted = false;
  for (const auto& m : c["volumeMounts"]) {
    if (Str(m, "name") == "models") {
      mounted = true;
      EXPECT_TRUE(m["readOnly"].as<bool>());
      EXPECT_EQ(FlagValue(c, "--model")->rfind(Str(m, "mountPath"), 0), 0u) << "--model is on the volume";
    }
  }
  EXPECT_TRUE(mounted);
  bool claimed = false;
  for (const auto& v : Seq(d, "spec.template.spec.volumes")) {
    if (Str(v, "name") == "models") claimed = Str(v, "persistentVolumeClaim.claimName") == "gsa-models";
  }
  EXPECT_TRUE(claimed);
  Object("PersistentVolumeClaim/gsa-models");
}

// ---- Services, PodDisruptionBudget, HorizontalPodAutoscaler ----------------------------------

TEST(ManifestsTest, ServicesExposeGrpcAndMetricsPortsOfTheServerPods) {
  for (const std::string name : {"gsa-server", "gsa-server-headless"}) {
    SCOPED_TRACE(name);
    const YAML::Node s = Object("Service/" + name);
    ExpectSelects(*At(s, "spec.selector"), ServerPodLabels(), name);
    std::map<std::string, int> ports;
    for (const auto& p : Seq(s, "spec.ports")) {
      ports[Str(p, "name")] = p["port"].as<int>();
      EXPECT_EQ(Str(p, "targetPort"), Str(p, "name")) << "targets the container port by name";
    }
    EXPECT_EQ(ports["grpc"], kGrpcPort);
    EXPECT_EQ(ports["metrics"], kMetricsPort);
  }
  EXPECT_EQ(Str(Object("Service/gsa-server-headless"), "spec.clusterIP"), "None");
}

TEST(ManifestsTest, PodDisruptionBudgetSelectsTheServerPods) {
  const YAML::Node pdb = Object("PodDisruptionBudget/gsa-server");
  EXPECT_EQ(Str(pdb, "apiVersion"), "policy/v1");
  ExpectSelects(*At(pdb, "spec.selector.matchLabels"), ServerPodLabels(), "PDB");
  EXPECT_TRUE(At(pdb, "spec.maxUnavailable") || At(pdb, "spec.minAvailable"));
}

TEST(ManifestsTest, AutoscalerScalesTheServerOnQueueDepthPerPod) {
  const YAML::Node hpa = Object("HorizontalPodAutoscaler/gsa-server");
  EXPECT_EQ(Str(hpa, "apiVersion"), "autoscaling/v2");
  EXPECT_EQ(Str(hpa, "spec.scaleTargetRef.kind"), "Deployment");
  EXPECT_EQ(Str(hpa, "spec.scaleTargetRef.name"), "gsa-server");
  EXPECT_LE(At(hpa, "spec.minReplicas")->as<int>(), At(hpa, "spec.maxReplicas")->as<int>());
  bool queue_depth = false;
  for (const auto& m : Seq(hpa, "spec.metrics")) {
    if (Str(m, "type") == "Pods" && Str(m, "pods.metric.name") == "gsa_queue_depth") {
      queue_depth = true;
      EXPECT_EQ(Str(m, "pods.target.type"), "AverageValue");
      EXPECT_FALSE(Str(m, "pods.target.averageValue").empty());
    }
  }
  EXPECT_TRUE(queue_depth) << "a Pods metric gsa_queue_depth";
  // prometheus-adapter serves that metric name.
  const YAML::Node adapter = YAML::LoadFile((kDeployDir / "k8s/prometheus-adapter/values.yaml").string());
  bool served = false;
  for (const auto& rule : Seq(adapter, "rules.custom")) {
    served = served || (Str(rule, "name.as") == "gsa_queue_depth" &&
                        Str(rule, "seriesQuery").find("gsa_queue_depth") != std::string::npos);
  }
  EXPECT_TRUE(served);
}

// ---- Envoy -------------------------------------------------------------------------------------

TEST(ManifestsTest, EnvoyClusterSpeaksHttp2ToHealthCheckedReplicasOfTheHeadlessService) {
  const YAML::Node c = EnvoyCluster("gsa_server");
  auto options = At(c, "typed_extension_protocol_options");
  ASSERT_TRUE(options.has_value());
  const YAML::Node http = (*options)["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
  ASSERT_TRUE(http);
  EXPECT_TRUE(At(http, "explicit_http_config.http2_protocol_options").has_value());
  bool grpc_health = false;
  for (const auto& hc : c["health_checks"]) grpc_health = grpc_health || static_cast<bool>(hc["grpc_health_check"]);
  EXPECT_TRUE(grpc_health) << "health_checks with grpc_health_check";
  EXPECT_EQ(Str(c, "type"), "STRICT_DNS");
  // The headless Service in the kustomization's namespace, on the gRPC port.
  const std::string ns = Str(YAML::LoadFile((kDeployDir / "k8s/kustomization.yaml").string()), "namespace");
  const YAML::Node address = c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"];
  EXPECT_EQ(Str(address, "socket_address.address"), "gsa-server-headless." + ns + ".svc.cluster.local");
  EXPECT_EQ(At(address, "socket_address.port_value")->as<int>(), kGrpcPort);
  Object("Service/gsa-server-headless");
}

TEST(ManifestsTest, EnvoyRetriesOnlyCallsThatNeverStarted) {
  const std::set<std::string> expected = {"connect-failure", "refused-stream", "unavailable"};
  int routes = 0;
  for (const auto& listener : Seq(EnvoyConfig(), "static_resources.listeners")) {
    for (const auto& chain : listener["filter_chains"]) {
      for (const auto& filter : chain["filters"]) {
        auto vhosts = At(filter, "typed_config.route_config.virtual_hosts");
        if (!vhosts) continue;
        for (const auto& vh : *vhosts) {
          for (const auto& route : vh["routes"]) {
            if (Str(route, "route.cluster") != "gsa_server") continue;
            ++routes;
            std::set<std::string> on;
            std::stringstream list(Str(route, "route.retry_policy.retry_on"));
            for (std::string item; std::getline(list, item, ',');) on.insert(item);
            EXPECT_EQ(on, expected) << "no reset/5xx retries: Generate is not idempotent once started";
            EXPECT_EQ(Str(route, "route.timeout"), "0s") << "streams last longer than the 15 s default";
          }
        }
      }
    }
  }
  EXPECT_GE(routes, 1) << "a route to cluster gsa_server";
}

TEST(ManifestsTest, EnvoyDeploymentLoadsTheConfigAndItsServiceReachesTheListener) {
  const YAML::Node d = Object("Deployment/gsa-lb");
  const YAML::Node c = Container(d, "envoy");
  EXPECT_EQ(FlagValue(c, "-c").value_or(""), "/etc/envoy/envoy.yaml");
  bool mounted = false;
  for (const auto& m : c["volumeMounts"]) mounted = mounted || Str(m, "mountPath") == "/etc/envoy";
  EXPECT_TRUE(mounted);
  int grpc_container_port = 0;
  for (const auto& p : c["ports"]) {
    if (Str(p, "name") == "grpc") grpc_container_port = p["containerPort"].as<int>();
  }
  int listener_port = 0;
  for (const auto& l : Seq(EnvoyConfig(), "static_resources.listeners")) {
    if (Str(l, "name") == "grpc") listener_port = At(l, "address.socket_address.port_value")->as<int>();
  }
  EXPECT_NE(listener_port, 0);
  EXPECT_EQ(grpc_container_port, listener_port);
  const YAML::Node s = Object("Service/gsa-lb");
  ExpectSelects(*At(s, "spec.selector"), *At(d, "spec.template.metadata.labels"), "gsa-lb");
  EXPECT_EQ((*At(s, "spec.ports"))[0]["port"].as<int>(), kGrpcPort);
  EXPECT_EQ(Str((*At(s, "spec.ports"))[0], "targetPort"), "grpc");
}

// ---- Dockerfile and nginx (text) ---------------------------------------------------------------

TEST(ManifestsTest, DockerfileBuildsOnCudaDevelAndServesFromCudaRuntimeAsNonRoot) {
  const std::string d = ReadText(kDeployDir / "Dockerfile");
  auto has = [&](const std::string& re) { return std::regex_search(d, std::regex(re)); };
  EXPECT_TRUE(has(R"(\nFROM nvidia/cuda:\$\{CUDA_VERSION\}-devel-ubuntu\S+ AS builder\n)"));
  EXPECT_TRUE(has(R"(\nFROM nvidia/cuda:\$\{CUDA_VERSION\}-runtime-ubuntu\S+ AS runtime\n)"));
  EXPECT_TRUE(has(R"(\nARG CUDA_VERSION=13\.)")) << "CUDA 13";
  EXPECT_TRUE(has(R"(\nENTRYPOINT \["gsa-server", "--host", "0\.0\.0\.0"\]\n)"));
  EXPECT_TRUE(has(R"(\nCMD \[[^\]]*"--metrics-port", "9090")"));
  EXPECT_TRUE(has(R"(\nEXPOSE 50051 9090\n)"));
  EXPECT_TRUE(has(R"(\nUSER 10001:10001\n)"));
  EXPECT_TRUE(has(R"(COPY --from=builder (?:[^\n]|\\\n)*/opt/gsa/bin/gsa-server(?:[^\n]|\\\n)*libgsa_spm\.so /opt/gsa/bin/\n)"))
      << "the binaries with libgsa_spm.so beside them";
  EXPECT_TRUE(has(R"(COPY --from=builder /opt/gsa/share/default-model /opt/gsa/share/default-model)"));
  EXPECT_TRUE(has(R"(deploy/install-deps\.sh)")) << "one dependency list";
  EXPECT_TRUE(has(R"(cannot|NOT BUILT)")) << "says it is not built here";
}

TEST(ManifestsTest, NginxConfigPassesGrpcOverHttp2AndRetriesRefusedConnections) {
  const std::string n = ReadText(kDeployDir / "nginx/gsa.conf");
  auto has = [&](const std::string& re) { return std::regex_search(n, std::regex(re)); };
  EXPECT_TRUE(has(R"(\n\s*listen \S+ http2;)"));
  EXPECT_TRUE(has(R"(\n\s*grpc_pass grpc://gsa_replicas;)"));
  EXPECT_TRUE(has(R"(\n\s*grpc_next_upstream error timeout non_idempotent;)"));
  EXPECT_TRUE(has(R"(\n\s*client_max_body_size 64m;)"));
  EXPECT_TRUE(has(R"(\$upstream_addr)")) << "the access log names the replica";
  EXPECT_TRUE(has(R"(\$upstream_http_grpc_status)"));
}

}  // namespace
