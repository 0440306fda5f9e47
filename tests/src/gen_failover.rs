//! Seeded generator of valid Istio meshes for `region-failover`, for property tests judged
//! by Istio's own config compiler (`istio_oracle`).
//!
//! A [`FailoverMesh`] is the service `frontend` in the alert's namespace with pods in three
//! regions (versions `v1`, sometimes a `v2` canary in some regions only), sidecar clients in
//! two or three namespaces and every region, sometimes an ingress gateway, and the
//! DestinationRules and VirtualServices owners write for it: subsets keyed on the region
//! label or on `version`, locality settings (none, `failover` with or without outlier
//! detection, `distribute` from `*` or per client locality, `enabled: false`), port-level
//! settings, a second rule (in the alert's, a client's or the root namespace), region
//! splits by subset or by per-region host, header routes pinned to one subset,
//! gateway-bound routes. Every object validates against the Istio CRD schemas and Istio's
//! own rules.
//!
//! Names are templates with `{P}` ([`PREFIX`]), filled with a prefix unique to one run of
//! the mesh, so many meshes share one control plane: the function lists VirtualServices and
//! DestinationRules in every namespace, and every host of a mesh is its own.
//! [`FailoverMesh::shrink`] proposes smaller meshes for reducing a failing one;
//! [`FailoverMesh::to_yaml`] prints one. [`run`] deploys, reads back and compiles them.

mod generate;
pub mod run;
mod shrink;

use serde_json::{Value, json};

use crate::generated::Generated;
use crate::istio_oracle::{Client, World};
pub use crate::mesh_gen::{ClientSpec, PREFIX, Violation};

/// The alert's `service`: the Service whose traffic is drained.
pub const SERVICE: &str = "frontend";
/// The port `frontend` (and each per-region Service) serves.
pub const PORT: u16 = 8080;
/// The port the ingress gateway listens on.
pub const GATEWAY_PORT: u16 = 80;
/// The name of the ingress gateway proxy, when a mesh has one.
pub const GATEWAY_PROXY: &str = "ingress";
/// The label that keys subsets on a region (the node label Istio copies to endpoints).
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";

/// Which regions' health the function is told about (`REGION_HEALTH_URLS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthMode {
    /// Not configured: every region but the degraded one counts healthy, and the function
    /// knows only the regions region-labelled subsets name.
    Unconfigured,
    /// A URL for every region, each answering 200.
    AllHealthy,
    /// A URL for every region; this one answers 503.
    Unhealthy(String),
}

/// One generated mesh. Names and hosts are templates with [`PREFIX`]; the accessors return
/// them with the mesh's prefix.
#[derive(Debug, Clone, PartialEq)]
pub struct FailoverMesh {
    /// The seed it was generated from (shrunk meshes keep it).
    pub seed: u64,
    /// What `{P}` stands for.
    pub prefix: String,
    /// The alert's `region`: the degraded one.
    pub degraded: String,
    /// Every namespace, the alert's and the root one included (templates).
    pub namespaces: Vec<String>,
    /// DestinationRules and VirtualServices the API server stores, in creation order
    /// (templates).
    pub objects: Vec<Value>,
    /// Objects only the oracle sees: Services, pods, the Gateway (templates).
    pub world: Vec<Value>,
    /// The sidecar client proxies.
    pub clients: Vec<ClientSpec>,
    /// The ingress gateway proxy's region, when the mesh has one.
    pub gateway: Option<String>,
    /// What the function learns of the regions' health.
    pub health: HealthMode,
}

impl FailoverMesh {
    /// The alert's namespace, where `frontend` lives (template).
    pub fn alert_template() -> String {
        format!("{PREFIX}-shop")
    }

    /// The alert's `namespace`.
    pub fn alert_ns(&self) -> String {
        self.render_str(&Self::alert_template())
    }

    /// `frontend`'s fully qualified host.
    pub fn fqdn(&self) -> String {
        format!("{SERVICE}.{}.svc.cluster.local", self.alert_ns())
    }

    /// The authority the ingress gateway serves `frontend` under (template).
    pub fn authority_template() -> String {
        format!("www.{PREFIX}.example.com")
    }

    /// The authority the ingress gateway serves `frontend` under.
    pub fn authority(&self) -> String {
        self.render_str(&Self::authority_template())
    }

    /// Every client proxy for the oracle: the sidecars, then the gateway if any.
    pub fn client_proxies(&self) -> Vec<Client> {
        let mut out = self.sidecars(&self.clients);
        if let Some(region) = &self.gateway {
            let mut gateway = Client::labelled(
                GATEWAY_PROXY,
                &self.root_namespace(),
                region,
                json!({"istio": "ingressgateway"}),
            );
            gateway.gateway_labels = Some(json!({"istio": "ingressgateway"}));
            out.push(gateway);
        }
        out
    }

    /// The oracle's world: namespaces, one node per region, the oracle-only objects and
    /// `stored` (the objects as the API server stores them).
    pub fn world_with(&self, stored: &[Value]) -> World {
        self.world_in(&crate::istio_oracle::REGIONS, stored)
    }

    /// `REGION_HEALTH_URLS` for this mesh, given the URL of an endpoint answering 200 and
    /// of one answering 503; `None` when not configured.
    pub fn health_urls(&self, ok: &str, failing: &str) -> Option<String> {
        let bad = match &self.health {
            HealthMode::Unconfigured => return None,
            HealthMode::AllHealthy => None,
            HealthMode::Unhealthy(region) => Some(region.as_str()),
        };
        let entries: Vec<String> = crate::istio_oracle::REGIONS
            .iter()
            .map(|r| format!("{r}={}", if Some(*r) == bad { failing } else { ok }))
            .collect();
        Some(entries.join(","))
    }

    /// Whether the function is told `region` is healthy (the degraded one never is).
    pub fn healthy(&self, region: &str) -> bool {
        region != self.degraded
            && match &self.health {
                HealthMode::Unhealthy(bad) => bad != region,
                _ => true,
            }
    }

    /// A measure of size for shrinking: JSON leaves of every object, each client, the
    /// gateway and a configured health check.
    pub fn size(&self) -> usize {
        let health = match self.health {
            HealthMode::Unconfigured => 0,
            HealthMode::AllHealthy => 1,
            HealthMode::Unhealthy(_) => 2,
        };
        self.object_leaves()
            + 4 * self.clients.len()
            + 4 * usize::from(self.gateway.is_some())
            + self.namespaces.len()
            + health
    }

    /// Every object as YAML (a `kubectl apply -f` stream), with a header naming the seed,
    /// the alert, the health check and the client proxies; names carry the mesh's prefix.
    pub fn to_yaml(&self) -> String {
        let health = match &self.health {
            HealthMode::Unconfigured => "REGION_HEALTH_URLS unset".to_owned(),
            HealthMode::AllHealthy => "REGION_HEALTH_URLS: every region answers 200".to_owned(),
            HealthMode::Unhealthy(r) => {
                format!("REGION_HEALTH_URLS: every region answers 200 but {r} (503)")
            }
        };
        let mut out = format!(
            "# seed {} (prefix {}); root namespace {}; {health}\n\
             # alert: namespace={} service={SERVICE} region={} (host {})\n",
            self.seed,
            self.prefix,
            self.root_namespace(),
            self.alert_ns(),
            self.degraded,
            self.fqdn(),
        );
        for c in &self.clients {
            out.push_str(&format!(
                "# client proxy {} in {} ({})\n",
                c.name,
                self.render_str(&c.namespace),
                c.region,
            ));
        }
        if let Some(region) = &self.gateway {
            out.push_str(&format!(
                "# ingress gateway proxy {GATEWAY_PROXY} in {} ({region}), serving {}\n",
                self.root_namespace(),
                self.authority()
            ));
        }
        out.push_str(&self.yaml_documents());
        out
    }

    /// Why an object of this mesh is invalid (CRD schema or Istio's own rules), if one is.
    pub fn invalid(&self) -> Option<String> {
        self.first_invalid(|object| {
            let mut errors = crate::mesh_gen::istio_rule_errors(object);
            errors.extend(virtual_service_errors(object));
            errors
        })
    }
}

/// Istio's validation errors for a VirtualService that the API server's schema does not
/// catch (the istiod webhook's rules this generator can break); empty when valid.
pub fn virtual_service_errors(object: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    if object["kind"] != "VirtualService" {
        return errors;
    }
    let spec = &object["spec"];
    // No hosts: a delegate, whose routes a root VirtualService takes in (Istio's
    // `ValidateVirtualService` with delegation on, its default); it binds no gateway and
    // delegates no further.
    let delegate = spec["hosts"].as_array().is_none_or(Vec::is_empty);
    if delegate && spec.get("gateways").is_some() {
        errors.push("a delegate binds no gateway".into());
    }
    let http = spec["http"].as_array().map_or(&[][..], Vec::as_slice);
    if http.is_empty() {
        errors.push("http: at least one route".into());
    }
    for (i, route) in http.iter().enumerate() {
        if route.get("delegate").is_some() {
            if delegate {
                errors.push(format!("http[{i}]: a delegate delegates no further"));
            }
            if route.get("route").is_some() || route.get("redirect").is_some() {
                errors.push(format!("http[{i}]: a delegating route has no destination"));
            }
            continue;
        }
        let destinations = route["route"].as_array().map_or(&[][..], Vec::as_slice);
        if destinations.is_empty() {
            errors.push(format!("http[{i}]: no destination"));
        }
        if destinations
            .iter()
            .any(|d| d.pointer("/destination/host").is_none())
        {
            errors.push(format!("http[{i}]: a destination without host"));
        }
        let weights: Vec<i64> = destinations
            .iter()
            .map(|d| d["weight"].as_i64().unwrap_or(0))
            .collect();
        let total: i64 = weights.iter().sum();
        let single_ok = destinations.len() == 1 && (total == 0 || total == 100);
        if !single_ok && total != 100 {
            errors.push(format!("http[{i}]: weights sum to {total}, not 100"));
        }
        if route.get("match").is_some_and(|m| {
            m.as_array().is_none_or(|m| {
                m.is_empty() || m.iter().any(|x| x.as_object().is_none_or(|o| o.is_empty()))
            })
        }) {
            errors.push(format!("http[{i}]: an empty match"));
        }
    }
    errors
}
