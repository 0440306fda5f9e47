//! Seeded generator of meshes with a failing canary, for the `error-rollback` property test
//! judged by Istio's own config compiler (`istio_oracle`).
//!
//! A [`RollbackMesh`] is the Service `checkout` (in the alert's namespace) with pods of
//! versions v1 (stable) and v2 (failing, the alert's `version`), sometimes v0 and v3, in 2-3
//! regions; DestinationRules with subsets keyed on `version` under arbitrary names, in the
//! alert's namespace (sometimes two), a client namespace or the root namespace, with
//! `exportTo` variants; the opted-in VirtualService (short or FQDN hosts, header-matched
//! canary routes, weighted splits, mirrors, the stable-subset annotation) and sometimes a
//! client namespace's own VirtualService, a gateway-bound one (with its Gateway and router
//! proxy), one not opted in, or a twin; and sidecar clients in the alert's namespace and
//! 1-2 client namespaces.
//!
//! Every name carries a prefix unique to one run of the mesh ([`PREFIX`] in the templates),
//! so many meshes share one control plane; hosts are unique per mesh. The random stream is
//! `mesh_gen`'s splitmix ([`crate::mesh_gen::rng::Rng`]).

mod generate;
pub mod run;
mod shrink;

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::generated::Generated;
use crate::istio_oracle::{Client, World};
use crate::mesh_gen::ClientSpec;

/// What the templates hold in place of the mesh's prefix.
pub use crate::generated::PREFIX;
/// The port `checkout` serves.
pub const PORT: u16 = 8080;
/// The failing version: the alert's `version` label.
pub const FAILING: &str = "v2";
/// The service the alert names.
pub const SERVICE: &str = "checkout";
/// The opt-in label.
pub const OPT_IN: (&str, &str) = ("auto_remediation", "active");

/// An ingress gateway proxy (Envoy `router`) of a mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewaySpec {
    /// Proxy name.
    pub name: String,
    /// Namespace (template).
    pub namespace: String,
    /// Region of its node.
    pub region: String,
}

/// One generated mesh. Names, namespaces and hosts are templates with [`PREFIX`].
#[derive(Debug, Clone, PartialEq)]
pub struct RollbackMesh {
    /// The seed it was generated from (shrunk meshes keep it).
    pub seed: u64,
    /// What `{P}` stands for.
    pub prefix: String,
    /// The regions with a node.
    pub regions: Vec<String>,
    /// Every namespace, the root one included (templates).
    pub namespaces: Vec<String>,
    /// The alert's namespace, where `checkout` lives (template).
    pub alert_namespace: String,
    /// The alert's `service` label: `checkout` or its FQDN (template).
    pub service_label: String,
    /// Objects the API server stores, in creation order: the Service, DestinationRules,
    /// VirtualServices (templates).
    pub objects: Vec<Value>,
    /// Objects only the oracle sees: pods, the Gateway (templates).
    pub world: Vec<Value>,
    /// The sidecar clients.
    pub clients: Vec<ClientSpec>,
    /// The ingress gateway proxy, if the mesh has one.
    pub gateway: Option<GatewaySpec>,
}

impl RollbackMesh {
    /// The alert's `namespace`.
    pub fn alert_ns(&self) -> String {
        self.render_str(&self.alert_namespace)
    }

    /// The alert's `service`.
    pub fn service_value(&self) -> String {
        self.render_str(&self.service_label)
    }

    /// `checkout`'s fully qualified host (what Envoy cluster names carry).
    pub fn fqdn(&self) -> String {
        format!("{SERVICE}.{}.svc.cluster.local", self.alert_ns())
    }

    /// The pod IPs of `checkout` whose `version` is `version`.
    pub fn pods_of(&self, version: &str) -> BTreeSet<String> {
        self.world
            .iter()
            .filter(|o| o["kind"] == "Pod" && o["metadata"]["labels"]["app"] == SERVICE)
            .filter(|o| o["metadata"]["labels"]["version"] == version)
            .filter_map(|o| o["status"]["podIP"].as_str().map(str::to_owned))
            .collect()
    }

    /// Every proxy to compile for: the sidecars, then the gateway if any.
    pub fn proxies(&self) -> Vec<Client> {
        let mut out = self.sidecars(&self.clients);
        if let Some(g) = &self.gateway {
            let mut router = Client::labelled(
                &g.name,
                &self.render_str(&g.namespace),
                &g.region,
                json!({}),
            );
            router.gateway_labels = Some(json!({"istio": "ingressgateway"}));
            out.push(router);
        }
        out
    }

    /// The oracle's world: namespaces, one node per region, the oracle-only objects and
    /// `stored` (the objects as the API server stores them).
    pub fn world_with(&self, stored: &[Value]) -> World {
        self.world_in(&self.regions, stored)
    }

    /// A measure of size for shrinking: JSON leaves of every object, plus each proxy.
    pub fn size(&self) -> usize {
        self.object_leaves()
            + 4 * (self.clients.len() + usize::from(self.gateway.is_some()))
            + self.regions.len()
            + self.namespaces.len()
    }

    /// Why an object of this mesh fails the Istio CRD schemas, if one does.
    pub fn invalid(&self) -> Option<String> {
        self.first_invalid(|_| Vec::new())
    }

    /// Every object as YAML (a `kubectl apply -f` stream), with a header naming the seed,
    /// the regions, the proxies and the alert.
    pub fn to_yaml(&self) -> String {
        let mut out = format!(
            "# seed {} (prefix {}); regions {}; root namespace {}\n\
             # alert: namespace={} service={} version={FAILING} (host {})\n",
            self.seed,
            self.prefix,
            self.regions.join(", "),
            self.root_namespace(),
            self.alert_ns(),
            self.service_value(),
            self.fqdn(),
        );
        for c in &self.clients {
            let labels: Vec<String> = c.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push_str(&format!(
                "# sidecar {} in {} ({}), labels {}\n",
                c.name,
                self.render_str(&c.namespace),
                c.region,
                labels.join(",")
            ));
        }
        if let Some(g) = &self.gateway {
            out.push_str(&format!(
                "# gateway proxy {} in {} ({}), labels istio=ingressgateway\n",
                g.name,
                self.render_str(&g.namespace),
                g.region
            ));
        }
        out.push_str(&self.yaml_documents());
        out
    }
}
