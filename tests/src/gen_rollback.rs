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
use crate::mesh_gen::yaml;

use std::collections::BTreeSet;

use serde_json::{Value, json};

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
    /// The same mesh under another prefix.
    pub fn with_prefix(&self, prefix: &str) -> RollbackMesh {
        RollbackMesh {
            prefix: prefix.to_owned(),
            ..self.clone()
        }
    }

    /// `template` with the prefix filled in.
    pub fn render_str(&self, template: &str) -> String {
        template.replace(PREFIX, &self.prefix)
    }

    /// `template` (any JSON) with the prefix filled in, in keys and strings.
    pub fn render(&self, template: &Value) -> Value {
        crate::generated::render(template, &self.prefix)
    }

    /// The root namespace template (standing in for `istio-system`).
    pub fn root_template() -> String {
        format!("{PREFIX}-root")
    }

    /// The mesh's root configuration namespace.
    pub fn root_namespace(&self) -> String {
        self.render_str(&Self::root_template())
    }

    /// Every namespace of the mesh.
    pub fn namespace_names(&self) -> Vec<String> {
        self.namespaces.iter().map(|n| self.render_str(n)).collect()
    }

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

    /// The objects to create on the API server, in order.
    pub fn api_objects(&self) -> Vec<Value> {
        self.objects.iter().map(|o| self.render(o)).collect()
    }

    /// The objects only the oracle sees.
    pub fn world_objects(&self) -> Vec<Value> {
        self.world.iter().map(|o| self.render(o)).collect()
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
        let mut out: Vec<Client> = self
            .clients
            .iter()
            .map(|c| {
                Client::labelled(
                    &c.name,
                    &self.render_str(&c.namespace),
                    &c.region,
                    json!(c.labels),
                )
            })
            .collect();
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
        let namespaces = self.namespace_names();
        let ns: Vec<&str> = namespaces.iter().map(String::as_str).collect();
        let regions: Vec<&str> = self.regions.iter().map(String::as_str).collect();
        let mut world = World::new(&ns, &regions);
        for object in stored.iter().cloned().chain(self.world_objects()) {
            world.add(object);
        }
        world
    }

    /// A measure of size for shrinking: JSON leaves of every object, plus each proxy.
    pub fn size(&self) -> usize {
        fn leaves(v: &Value) -> usize {
            match v {
                Value::Object(m) => m.values().map(leaves).sum::<usize>() + 1,
                Value::Array(a) => a.iter().map(leaves).sum::<usize>() + 1,
                _ => 1,
            }
        }
        self.objects.iter().map(leaves).sum::<usize>()
            + self.world.iter().map(leaves).sum::<usize>()
            + 4 * (self.clients.len() + usize::from(self.gateway.is_some()))
            + self.regions.len()
            + self.namespaces.len()
    }

    /// Why an object of this mesh fails the Istio CRD schemas, if one does.
    pub fn invalid(&self) -> Option<String> {
        for object in self.api_objects() {
            let kind = object["kind"].as_str().unwrap_or_default();
            if kind == "Service" {
                continue;
            }
            let version = object["apiVersion"]
                .as_str()
                .and_then(|v| v.rsplit('/').next())
                .unwrap_or_default();
            if let Err(errors) = crate::crd_schema::validate_istio(kind, version, &object) {
                return Some(format!(
                    "{kind} {}: schema: {errors:?}",
                    object["metadata"]["name"]
                ));
            }
        }
        None
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
        let namespaces = self
            .namespace_names()
            .into_iter()
            .map(|n| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}));
        let docs: Vec<String> = namespaces
            .chain(self.api_objects())
            .chain(self.world_objects())
            .map(|o| yaml::to_yaml(&o))
            .collect();
        out.push_str("---\n");
        out.push_str(&docs.join("\n---\n"));
        out.push('\n');
        out
    }
}
