//! Seeded generator of valid, ordinary-but-rich Istio meshes, for property tests judged by
//! Istio's own config compiler (`istio_oracle`).
//!
//! A [`GeneratedMesh`] is a database (a Service with pods in several regions, or a
//! `ServiceEntry` host), the client workloads that call it (sidecars in several namespaces
//! and regions), and the DestinationRules for the database host that real clusters carry: in
//! the client namespaces, the database's namespace and the mesh's root namespace; with
//! subsets, port-level settings, subset policies, `workloadSelector`, `exportTo`, breaker
//! fields stricter and looser than the remediation's, and locality settings. Every object
//! validates against the Istio CRD schemas and Istio's own rules.
//!
//! Every name carries a prefix unique to one run of the mesh (`{P}` in the templates held
//! here), so many meshes live side by side in one control plane: their namespaces, the
//! root namespace that stands in for `istio-system`, and every host are their own.
//! [`GeneratedMesh::shrink`] proposes smaller meshes, for reducing a failing one to a
//! minimal example; [`GeneratedMesh::to_yaml`] prints one.

mod generate;
mod policy;
pub mod rng;
pub mod run;
mod shrink;
pub(crate) mod yaml;

use std::collections::BTreeMap;

use serde_json::Value;

use crate::generated::Generated;
use crate::istio_oracle::{Client, World};

pub use policy::istio_rule_errors;

/// What the templates hold in place of the mesh's prefix.
pub use crate::generated::PREFIX;
/// The database port every generated database serves.
pub const DB_PORT: u16 = 5432;
/// The port of the metrics sidecar some databases also serve.
pub const METRICS_PORT: u16 = 9187;
/// The opt-in label the remediations look for.
pub const OPT_IN: (&str, &str) = ("auto_remediation", "active");

/// Between `lo` and `hi` of the regions a mesh may have nodes in, picked by `rng`.
pub(crate) fn pick_regions(rng: &mut rng::Rng, lo: usize, hi: usize) -> Vec<String> {
    let count = rng.range(lo, hi);
    let regions = rng.sample(&crate::istio_oracle::REGIONS, count);
    regions.into_iter().map(str::to_owned).collect()
}

/// Between `lo` and `hi` namespace templates (`{P}-<name>`) of `names`, picked by `rng`.
pub(crate) fn pick_namespaces(
    rng: &mut rng::Rng,
    names: &[&str],
    lo: usize,
    hi: usize,
) -> Vec<String> {
    let count = rng.range(lo, hi);
    let names = rng.sample(names, count);
    names.into_iter().map(|n| format!("{PREFIX}-{n}")).collect()
}

/// A client workload: one sidecar proxy to compile configuration for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSpec {
    /// Proxy name, unique in the mesh.
    pub name: String,
    /// Namespace (template).
    pub namespace: String,
    /// The region of its node.
    pub region: String,
    /// Workload labels (`app`, `tier`, `version`).
    pub labels: BTreeMap<String, String>,
}

/// How the database is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Database {
    /// A Kubernetes Service with pods in several regions.
    Service,
    /// A `ServiceEntry` (`MESH_EXTERNAL`) with static endpoints in several localities.
    StaticEntry,
    /// A `ServiceEntry` resolved by DNS.
    DnsEntry,
}

/// One generated mesh. Names and hosts are templates with [`PREFIX`]; the accessors
/// return them with the mesh's prefix.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedMesh {
    /// The seed it was generated from (shrunk meshes keep it).
    pub seed: u64,
    /// What `{P}` stands for.
    pub prefix: String,
    /// The regions with a node (2 or 3).
    pub regions: Vec<String>,
    /// Every namespace, the root one included (templates).
    pub namespaces: Vec<String>,
    /// The namespace the alert names: where the calling app lives (template).
    pub alert_namespace: String,
    /// The database's namespace (template).
    pub db_namespace: String,
    /// The calling app (the alert's `service` label).
    pub calling_service: String,
    /// The alert's `db_host` label: short when the Service is in the alert's namespace
    /// (template).
    pub db_host_label: String,
    /// The database's fully qualified host (template).
    pub db_host: String,
    /// How the database is reached.
    pub database: Database,
    /// Objects the API server stores, in creation order: the database's Service or
    /// ServiceEntry, then the DestinationRules (templates).
    pub objects: Vec<Value>,
    /// Objects only the oracle sees: pods, the clients' own Services (templates).
    pub world: Vec<Value>,
    /// The client proxies.
    pub clients: Vec<ClientSpec>,
}

impl GeneratedMesh {
    /// The alert's `namespace`.
    pub fn alert_ns(&self) -> String {
        self.render_str(&self.alert_namespace)
    }

    /// The alert's `db_host`.
    pub fn db_host_value(&self) -> String {
        self.render_str(&self.db_host_label)
    }

    /// The database's fully qualified host (what Envoy cluster names carry).
    pub fn db_fqdn(&self) -> String {
        self.render_str(&self.db_host)
    }

    /// The client proxies, for the oracle.
    pub fn client_proxies(&self) -> Vec<Client> {
        self.sidecars(&self.clients)
    }

    /// The oracle's world: namespaces, one node per region, the oracle-only objects and
    /// `stored` (the objects as the API server stores them).
    pub fn world_with(&self, stored: &[Value]) -> World {
        self.world_in(&self.regions, stored)
    }

    /// The DestinationRules (templates), with their index in [`GeneratedMesh::objects`].
    pub fn rules(&self) -> impl Iterator<Item = (usize, &Value)> {
        self.objects
            .iter()
            .enumerate()
            .filter(|(_, o)| o["kind"] == "DestinationRule")
    }

    /// A measure of size for shrinking: JSON leaves of every object, plus each client.
    pub fn size(&self) -> usize {
        self.object_leaves() + 4 * self.clients.len() + self.regions.len()
    }

    /// Every object as YAML (a `kubectl apply -f` stream), with a header naming the seed,
    /// the regions, the client proxies and the alert; names carry the mesh's prefix.
    pub fn to_yaml(&self) -> String {
        let mut out = format!(
            "# seed {} (prefix {}); regions {}; root namespace {}\n\
             # alert: namespace={} service={} db_host={} (host {})\n",
            self.seed,
            self.prefix,
            self.regions.join(", "),
            self.root_namespace(),
            self.alert_ns(),
            self.calling_service,
            self.db_host_value(),
            self.db_fqdn(),
        );
        for c in &self.clients {
            let labels: Vec<String> = c.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push_str(&format!(
                "# client proxy {} in {} ({}), labels {}\n",
                c.name,
                self.render_str(&c.namespace),
                c.region,
                labels.join(",")
            ));
        }
        out.push_str(&self.yaml_documents());
        out
    }

    /// Why an object of this mesh is invalid (CRD schema or Istio's own rules), if one is.
    pub fn invalid(&self) -> Option<String> {
        self.first_invalid(istio_rule_errors)
    }
}

/// A broken invariant: its class (what kind of breakage, for telling violations apart and
/// for keeping a shrunk mesh on the same one) and what exactly was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// A short stable name of the invariant broken.
    pub class: String,
    /// What was seen.
    pub detail: String,
}

impl Violation {
    /// A violation of `class`.
    pub fn new(class: &str, detail: impl Into<String>) -> Violation {
        Violation {
            class: class.to_owned(),
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}", self.class, self.detail)
    }
}
