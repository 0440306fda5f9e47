//! Istio's own verdict on a mesh: the objects go through Istio's config compiler
//! (`tests/istio-oracle`, built by `scripts/build-istio-oracle`), which prints the Envoy
//! configuration each client proxy would receive, and Istio's analyzer messages.
//!
//! Tests build a small world (namespaces, nodes with regions, Services, Pods), add the
//! VirtualServices and DestinationRules as the cluster stores them, and ask where each
//! client's requests for a host go: which endpoints, in which region, behind which breaker.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::events::workspace_root;

mod stored;

pub use stored::{client_namespace, store_service, stored_services};

/// The oracle binary: `ISTIO_ORACLE`, or built (cached) by `scripts/build-istio-oracle`.
pub fn oracle_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(path) = std::env::var_os("ISTIO_ORACLE") {
            return PathBuf::from(path);
        }
        let script = workspace_root().join("scripts/build-istio-oracle");
        let out = Command::new(&script)
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|err| panic!("{}: {err}", script.display()));
        assert!(out.status.success(), "{} failed", script.display());
        PathBuf::from(String::from_utf8(out.stdout).expect("path").trim())
    })
    .clone()
}

/// A Ready pod `name` with `labels` in `namespace`, on the node of `region`, at `ip`.
pub fn ready_pod(namespace: &str, name: &str, labels: Value, region: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"nodeName": format!("node-{region}"),
                 "containers": [{"name": "app", "image": "app"}]},
        "status": {"phase": "Running", "podIP": ip,
                   "conditions": [{"type": "Ready", "status": "True"}]}})
}

/// The namespace clients call the service from when they are not in its own.
pub const CLIENTS_NS: &str = "storefront";
/// The regions of the test worlds, one node each.
pub const REGIONS: [&str; 3] = ["us-east-1", "us-west-2", "eu-west-1"];

/// Clients in the service's own namespace and in [`CLIENTS_NS`], in two regions each.
pub fn clients(namespace: &str) -> Vec<Client> {
    vec![
        Client::sidecar("same-ns-east", namespace, "us-east-1"),
        Client::sidecar("same-ns-west", namespace, "us-west-2"),
        Client::sidecar("other-ns-east", CLIENTS_NS, "us-east-1"),
        Client::sidecar("other-ns-eu", CLIENTS_NS, "eu-west-1"),
    ]
}

/// Istio's default root configuration namespace (meshConfig `rootNamespace`).
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

/// A client proxy to compile configuration for.
#[derive(Debug, Clone)]
pub struct Client {
    /// Proxy name (for messages).
    pub name: &'static str,
    /// The namespace the proxy runs in.
    pub namespace: String,
    /// The proxy's region (its node's `topology.kubernetes.io/region`).
    pub region: &'static str,
    /// A gateway (Envoy `router`) with these workload labels, or a sidecar when `None`.
    pub gateway_labels: Option<Value>,
    /// A sidecar's workload labels (what a DestinationRule's `workloadSelector` matches).
    pub labels: Value,
}

impl Client {
    /// A sidecar in `namespace` and `region` (zone `<region>a`).
    pub fn sidecar(name: &'static str, namespace: &str, region: &'static str) -> Client {
        Client {
            name,
            namespace: namespace.into(),
            region,
            gateway_labels: None,
            labels: json!({}),
        }
    }

    /// A sidecar whose workload carries `labels`, with a name and region made at run time.
    pub fn labelled(name: &str, namespace: &str, region: &str, labels: Value) -> Client {
        Client {
            labels,
            ..Client::sidecar(interned(name), namespace, interned(region))
        }
    }

    /// An ingress gateway in `namespace` and `region` whose pods carry `labels` (what a
    /// Gateway's `selector` matches).
    pub fn gateway(
        name: &'static str,
        namespace: &str,
        region: &'static str,
        labels: Value,
    ) -> Client {
        Client {
            gateway_labels: Some(labels),
            ..Client::sidecar(name, namespace, region)
        }
    }
}

/// The mesh objects handed to the oracle, as a YAML (JSON documents) stream.
#[derive(Debug, Default, Clone)]
pub struct World {
    objects: Vec<Value>,
}

impl World {
    /// Namespaces and one node per region, named `node-<region>`.
    pub fn new(namespaces: &[&str], regions: &[&str]) -> World {
        let mut world = World::default();
        for namespace in namespaces {
            world.add(json!({"apiVersion": "v1", "kind": "Namespace",
                             "metadata": {"name": namespace}}));
        }
        for region in regions {
            world.add(json!({"apiVersion": "v1", "kind": "Node", "metadata": {
                "name": format!("node-{region}"),
                "labels": {"topology.kubernetes.io/region": region,
                           "topology.kubernetes.io/zone": format!("{region}a")}}}));
        }
        world
    }

    /// `namespace` and [`CLIENTS_NS`], with a node in each of [`REGIONS`].
    pub fn regional(namespace: &str) -> World {
        World::new(&[namespace, CLIENTS_NS], &REGIONS)
    }

    /// Adds the ingress Gateway `istio-system/public` serving `host` on port 80, and returns
    /// its proxy, `ingress` in us-west-2.
    pub fn ingress_gateway(&mut self, host: &str) -> Client {
        self.add(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "istio-system"}}),
        )
        .add(
            json!({"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
                "metadata": {"name": "public", "namespace": "istio-system"},
                "spec": {"selector": {"istio": "ingressgateway"}, "servers": [
                    {"port": {"number": 80, "name": "http", "protocol": "HTTP"},
                     "hosts": [host]}]}}),
        );
        Client::gateway(
            "ingress",
            "istio-system",
            "us-west-2",
            json!({"istio": "ingressgateway"}),
        )
    }

    /// Adds an object (a stored object's server-side fields are dropped).
    pub fn add(&mut self, mut object: Value) -> &mut World {
        if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            metadata.remove("managedFields");
        }
        self.objects.push(object);
        self
    }

    /// A ClusterIP Service selecting `app: <name>` on one HTTP port.
    pub fn service(&mut self, namespace: &str, name: &str, port: u16) -> &mut World {
        self.add(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"selector": {"app": name},
                     "ports": [{"name": "http", "port": port}]}}))
    }

    /// A Ready pod of `app` with `labels`, on the node of `region`, at `ip`.
    pub fn pod(
        &mut self,
        namespace: &str,
        app: &str,
        labels: Value,
        region: &str,
        ip: &str,
    ) -> &mut World {
        let mut all = json!({"app": app});
        if let (Some(all), Some(extra)) = (all.as_object_mut(), labels.as_object()) {
            all.extend(extra.clone());
        }
        let name = format!("{app}-{}", ip.replace('.', "-"));
        self.add(ready_pod(namespace, &name, all, region, ip))
    }

    /// The objects of `kind` in this world.
    pub fn objects_of(&self, kind: &str) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|o| o["kind"] == kind)
            .cloned()
            .collect()
    }

    /// The stream as YAML (every JSON document is a YAML document).
    pub fn yaml(&self) -> String {
        self.objects
            .iter()
            .map(|o| serde_json::to_string(o).expect("json"))
            .collect::<Vec<_>>()
            .join("\n---\n")
    }

    /// Compiles the world for `clients` with Istio's config compiler.
    pub fn compile(&self, clients: &[Client]) -> Compiled {
        let request = self.request(clients, DEFAULT_ROOT_NAMESPACE, true);
        let report = run_oracle(&request);
        Compiled::from_report(report).unwrap_or_else(|err| panic!("istio-oracle: {err}"))
    }

    /// The oracle's request compiling this world for `clients`, with `root_namespace` as the
    /// mesh's root configuration namespace, with or without the analyzers.
    pub fn request(&self, clients: &[Client], root_namespace: &str, analyze: bool) -> Value {
        let proxies: Vec<Value> = clients
            .iter()
            .map(|c| {
                let kind = if c.gateway_labels.is_some() {
                    "router"
                } else {
                    "sidecar"
                };
                json!({"name": c.name, "namespace": c.namespace, "region": c.region,
                       "zone": format!("{}a", c.region), "type": kind,
                       "labels": c.gateway_labels.clone().unwrap_or_else(|| c.labels.clone())})
            })
            .collect();
        json!({"objects": self.yaml(), "proxies": proxies,
               "rootNamespace": root_namespace, "analyze": analyze})
    }
}

/// One mesh to compile in a batch: the world, the client proxies and the root namespace.
pub type CompileJob = (World, Vec<Client>, String);

/// Worlds one oracle process compiles at most: Istio's fake discovery server keeps a few
/// MiB per world until the process ends.
const BATCH_LIMIT: usize = 50;

/// Compiles many worlds without the analyzers, in a few oracle processes side by side (one
/// per core; Istio's compiler starts once per process, not per world, and one process
/// compiles on one core). Each answer is the compiled configuration, or why Istio rejected
/// that world's objects (invalid configuration), in the order given.
pub fn compile_many(jobs: &[CompileJob]) -> Vec<Result<Compiled, String>> {
    if jobs.is_empty() {
        return Vec::new();
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let processes = jobs
        .len()
        .div_ceil(BATCH_LIMIT)
        .max(cores.min(jobs.len().div_ceil(4)));
    let size = jobs.len().div_ceil(processes);
    let chunks: Vec<&[CompileJob]> = jobs.chunks(size).collect();
    let mut out = Vec::with_capacity(jobs.len());
    // One process per core at a time.
    for wave in chunks.chunks(cores) {
        std::thread::scope(|scope| {
            let handles: Vec<_> = wave
                .iter()
                .map(|chunk| scope.spawn(move || compile_batch(chunk)))
                .collect();
            for handle in handles {
                out.extend(handle.join().expect("oracle thread"));
            }
        });
    }
    out
}

/// One oracle process compiling `jobs` (its batch mode).
fn compile_batch(jobs: &[CompileJob]) -> Vec<Result<Compiled, String>> {
    let batch: Vec<Value> = jobs
        .iter()
        .map(|(world, clients, root)| world.request(clients, root, false))
        .collect();
    let report = run_oracle(&json!({ "batch": batch }));
    let Some(Value::Array(reports)) = report.get("batch").cloned() else {
        panic!("istio-oracle: no batch in its answer");
    };
    assert_eq!(
        reports.len(),
        jobs.len(),
        "istio-oracle: one report per request"
    );
    reports.into_iter().map(Compiled::from_report).collect()
}

/// A name made at run time, as the `&'static str` that [`Client`] holds (kept once per
/// distinct name).
fn interned(name: &str) -> &'static str {
    static NAMES: OnceLock<Mutex<BTreeSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(known) = names.get(name) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(leaked);
    leaked
}

/// Runs the oracle on one request (single or batch) and returns its JSON answer.
fn run_oracle(request: &Value) -> Value {
    let mut child = Command::new(oracle_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("istio-oracle starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(request.to_string().as_bytes())
        .expect("request written");
    let out = child.wait_with_output().expect("istio-oracle runs");
    assert!(
        out.status.success(),
        "istio-oracle failed: {}",
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| l.contains("istio-oracle"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    serde_json::from_slice(&out.stdout).expect("istio-oracle prints its report")
}

/// What Istio compiled: per client proxy its routes and clusters, and the analyzer's messages.
#[derive(Debug, Clone, Deserialize)]
pub struct Compiled {
    /// One entry per client, in the order asked.
    pub proxies: Vec<ProxyConfig>,
    /// `istioctl analyze` messages for the objects (none when compiled without the analyzers).
    pub analysis: Vec<Value>,
    /// The oracle's answer as printed, every field included: for exact comparisons.
    #[serde(skip)]
    pub raw: Value,
}

/// The Envoy configuration of one proxy.
#[derive(Debug, Clone, Deserialize)]
pub struct ProxyConfig {
    /// The client's name.
    pub name: String,
    /// Every HTTP route of every route configuration.
    pub routes: Vec<Route>,
    /// Clusters by name (`outbound|<port>|<subset>|<host>`).
    pub clusters: std::collections::BTreeMap<String, Cluster>,
}

/// One Envoy route.
#[derive(Debug, Clone, Deserialize)]
pub struct Route {
    /// The route configuration (listener port for sidecars).
    pub route_config: String,
    /// Domains of the virtual host the route belongs to.
    pub domains: Vec<String>,
    /// The route's match (Envoy's `RouteMatch` as JSON).
    #[serde(rename = "match")]
    pub route_match: Option<Value>,
    /// Where requests go.
    pub clusters: Vec<WeightedCluster>,
}

/// A destination cluster of a route and its weight.
#[derive(Debug, Clone, Deserialize)]
pub struct WeightedCluster {
    /// Cluster name.
    pub name: String,
    /// Weight (any positive weight receives traffic).
    pub weight: u32,
}

/// One Envoy cluster.
#[derive(Debug, Clone, Deserialize)]
pub struct Cluster {
    /// Envoy's connect timeout (`10s` unless a DestinationRule sets it).
    pub connect_timeout: Option<String>,
    /// Envoy `CircuitBreakers` as JSON.
    pub circuit_breakers: Option<Value>,
    /// Envoy `OutlierDetection` as JSON, absent when off.
    pub outlier_detection: Option<Value>,
    /// Endpoints by locality, with priorities and locality weights relative to the client.
    pub localities: Vec<Locality>,
}

/// A locality's endpoints in a cluster.
#[derive(Debug, Clone, Deserialize)]
pub struct Locality {
    /// Region.
    pub region: String,
    /// Envoy priority (0 is used while healthy; higher ones only on failover).
    pub priority: u32,
    /// Locality weight (0 when Istio's locality weighting leaves it out).
    pub weight: u32,
    /// Endpoints.
    pub endpoints: Vec<Endpoint>,
}

/// One endpoint.
#[derive(Debug, Clone, Deserialize)]
pub struct Endpoint {
    /// Pod IP.
    pub address: String,
}

impl Compiled {
    /// The compiled configuration from one oracle report, or the error it carries.
    pub fn from_report(report: Value) -> Result<Compiled, String> {
        if let Some(error) = report.get("error").and_then(Value::as_str) {
            return Err(error.to_owned());
        }
        let mut compiled: Compiled = serde_json::from_value(report.clone())
            .map_err(|err| format!("unreadable report: {err}"))?;
        compiled.raw = report;
        Ok(compiled)
    }

    /// The raw JSON of the client named `name` (routes, clusters), every field included.
    pub fn raw_proxy(&self, name: &str) -> &Value {
        self.raw["proxies"]
            .as_array()
            .and_then(|proxies| proxies.iter().find(|p| p["name"] == name))
            .unwrap_or_else(|| panic!("no proxy {name}"))
    }

    /// The configuration of the client named `name`.
    pub fn proxy(&self, name: &str) -> &ProxyConfig {
        self.proxies
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no proxy {name}"))
    }

    /// Analyzer messages of level Error or Warning, as `CODE: message` lines.
    pub fn findings(&self) -> Vec<String> {
        self.analysis
            .iter()
            .filter(|m| matches!(m["level"].as_str(), Some("Error" | "Warning")))
            .map(|m| {
                format!(
                    "{}: {}",
                    m["code"].as_str().unwrap_or("?"),
                    m["message"].as_str().unwrap_or("?")
                )
            })
            .collect()
    }
}

impl ProxyConfig {
    /// The routes for requests to `host` (an FQDN) on `port`.
    pub fn routes_to(&self, host: &str, port: u16) -> Vec<&Route> {
        let domain = format!("{host}:{port}");
        self.routes
            .iter()
            .filter(|r| r.route_config == port.to_string())
            .filter(|r| r.domains.iter().any(|d| d == host || *d == domain))
            .collect()
    }

    /// The routes a gateway serves for requests with `authority` on its listener `port`.
    pub fn gateway_routes(&self, authority: &str, port: u16) -> Vec<&Route> {
        let config = format!("http.{port}");
        self.routes
            .iter()
            .filter(|r| r.route_config == config)
            .filter(|r| r.domains.iter().any(|d| d == authority))
            .collect()
    }

    /// The clusters a request to `host:port` can be sent to (weight above 0), over every route.
    pub fn clusters_receiving(&self, host: &str, port: u16) -> BTreeSet<String> {
        clusters_with_weight(self.routes_to(host, port))
    }

    /// The clusters a gateway sends requests for `authority` on `port` to (weight above 0).
    pub fn gateway_clusters_receiving(&self, authority: &str, port: u16) -> BTreeSet<String> {
        clusters_with_weight(self.gateway_routes(authority, port))
    }

    /// The endpoints (pod IP, region) behind `clusters` while every endpoint is healthy:
    /// Envoy priority 0 and positive locality weight.
    pub fn endpoints_of(&self, clusters: &BTreeSet<String>) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for name in clusters {
            let cluster = self.cluster(name);
            let first = cluster.localities.iter().map(|l| l.priority).min();
            for locality in &cluster.localities {
                if Some(locality.priority) != first || locality.weight == 0 {
                    continue;
                }
                for endpoint in &locality.endpoints {
                    out.insert((endpoint.address.clone(), locality.region.clone()));
                }
            }
        }
        out
    }

    /// The endpoints (with their regions) that requests to `host:port` reach while every
    /// endpoint is healthy: positive route weight, Envoy priority 0, positive locality weight.
    pub fn endpoints_receiving(&self, host: &str, port: u16) -> BTreeSet<(String, String)> {
        self.endpoints_of(&self.clusters_receiving(host, port))
    }

    /// The cluster named `name`.
    pub fn cluster(&self, name: &str) -> &Cluster {
        self.clusters
            .get(name)
            .unwrap_or_else(|| panic!("{}: no cluster {name}", self.name))
    }

    /// Every cluster of `host` (the default one and each subset's) on `port`.
    pub fn clusters_of(&self, host: &str, port: u16) -> Vec<(&String, &Cluster)> {
        let prefix = format!("outbound|{port}|");
        let suffix = format!("|{host}");
        self.clusters
            .iter()
            .filter(|(name, _)| name.starts_with(&prefix) && name.ends_with(&suffix))
            .collect()
    }
}

fn clusters_with_weight(routes: Vec<&Route>) -> BTreeSet<String> {
    routes
        .into_iter()
        .flat_map(|r| r.clusters.iter())
        .filter(|c| c.weight > 0)
        .map(|c| c.name.clone())
        .collect()
}

impl Cluster {
    /// The default-priority circuit-breaker threshold `field` (`max_connections`, ...).
    pub fn threshold(&self, field: &str) -> Option<u64> {
        self.circuit_breakers.as_ref()?["thresholds"]
            .as_array()?
            .iter()
            .find(|t| t.get("priority").is_none_or(|p| p == "DEFAULT"))?
            .get(field)?
            .as_u64()
    }
}
