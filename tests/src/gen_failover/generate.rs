//! Drawing one mesh from a seed.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::{ClientSpec, FailoverMesh, HealthMode, PORT, PREFIX, REGION_LABEL, SERVICE};
use crate::generated::{find_object, root_template};
use crate::istio_oracle::{REGIONS, ready_pod};
use crate::mesh_gen::rng::Rng;
use crate::mesh_gen::{OPT_IN, pick_namespaces, pick_regions};

/// Client namespaces (suffixes): the alert's own is `shop`.
const CLIENT_NAMESPACES: [&str; 3] = ["shop", "web", "jobs"];
/// Client apps, one per namespace.
const APPS: [&str; 3] = ["checkout", "storefront", "reports"];

/// How region subsets are named.
#[derive(Debug, Clone, Copy)]
enum Naming {
    /// `east`, `west`, `eu`.
    Short,
    /// The region itself (`us-east-1`).
    Region,
    /// `pool-a`, `pool-b`, `pool-c`: only the label tells the region.
    Opaque,
}

fn subset_name(naming: Naming, region: &str) -> String {
    let index = REGIONS.iter().position(|r| *r == region).unwrap_or(0);
    match naming {
        Naming::Short => ["east", "west", "eu"][index].to_owned(),
        Naming::Region => region.to_owned(),
        Naming::Opaque => ["pool-a", "pool-b", "pool-c"][index].to_owned(),
    }
}

/// How the VirtualService splits `frontend` per region.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Split {
    None,
    Subsets,
    Hosts,
}

struct Gen {
    rng: Rng,
    naming: Option<Naming>,
    versions: bool,
}

impl FailoverMesh {
    /// The mesh of `seed` (names under the placeholder prefix `mesh`).
    pub fn generate(seed: u64) -> FailoverMesh {
        let mut rng = Rng::new(seed);
        let degraded = (*rng.pick(&REGIONS)).to_owned();
        let mut client_namespaces = pick_namespaces(&mut rng, &CLIENT_NAMESPACES, 2, 3);
        client_namespaces.sort();
        let alert = FailoverMesh::alert_template();
        let mut namespaces = client_namespaces.clone();
        if !namespaces.contains(&alert) {
            namespaces.push(alert.clone());
        }
        namespaces.push(root_template());
        let health = match rng.below(5) {
            0 | 1 => HealthMode::Unconfigured,
            2 | 3 => HealthMode::AllHealthy,
            _ => {
                let others: Vec<&str> =
                    REGIONS.iter().copied().filter(|r| *r != degraded).collect();
                HealthMode::Unhealthy((*rng.pick(&others)).to_owned())
            }
        };
        let naming = rng
            .chance(55)
            .then(|| *rng.pick(&[Naming::Short, Naming::Region, Naming::Opaque]));
        let versions = rng.chance(35);
        let mut g = Gen {
            rng,
            naming,
            versions,
        };

        let mut world = Vec::new();
        let v2_regions = g.pods(&alert, &mut world);
        let mut clients = Vec::new();
        for (i, namespace) in client_namespaces.iter().enumerate() {
            let short = namespace.trim_start_matches(&format!("{PREFIX}-"));
            for region in REGIONS {
                let labels = BTreeMap::from([
                    ("app".to_owned(), APPS[i % APPS.len()].to_owned()),
                    ("version".to_owned(), "v1".to_owned()),
                ]);
                clients.push(ClientSpec {
                    name: format!("{short}-{region}"),
                    namespace: namespace.clone(),
                    region: region.to_owned(),
                    labels,
                });
            }
        }

        let split = match g.naming {
            Some(_) => *g
                .rng
                .pick(&[Split::None, Split::Subsets, Split::Subsets, Split::Hosts]),
            None => *g.rng.pick(&[Split::None, Split::None, Split::Hosts]),
        };
        if split == Split::Hosts || g.rng.chance(15) {
            for (i, region) in REGIONS.iter().enumerate() {
                world.push(service(
                    &format!("{SERVICE}-{region}"),
                    &alert,
                    json!({"app": SERVICE, "region": region}),
                    i + 2,
                ));
            }
        }
        let mut objects = Vec::new();
        let main_rule = g.naming.is_some() || g.versions || g.rng.chance(85);
        if main_rule {
            objects.push(g.main_rule(&alert, &v2_regions));
        }
        let (services, gateway_bound) = g.virtual_services(split, &degraded, &v2_regions);
        objects.extend(services);
        if g.rng.chance(30) {
            let others: Vec<String> = client_namespaces
                .iter()
                .filter(|n| **n != alert)
                .cloned()
                .chain([alert.clone(), root_template()])
                .collect();
            let namespace = g.rng.pick(&others).clone();
            objects.push(g.extra_rule(&namespace));
        }
        if g.rng.chance(15) {
            delegate(&mut objects, &alert, &mut g.rng);
        }
        // Created in name order within a kind and namespace: Istio orders rules for one
        // host by creation time, then name, and the server's timestamps have whole seconds,
        // so any other order would depend on when a second ticks.
        objects.sort_by_key(|o| {
            let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            (
                text(&o["kind"]),
                text(&o["metadata"]["namespace"]),
                text(&o["metadata"]["name"]),
            )
        });
        let gateway = gateway_bound.then(|| (*g.rng.pick(&REGIONS)).to_owned());
        if gateway.is_some() {
            world.push(
                json!({"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
                "metadata": {"name": "public", "namespace": root_template()},
                "spec": {"selector": {"istio": "ingressgateway"}, "servers": [
                    {"port": {"number": 80, "name": "http", "protocol": "HTTP"},
                     "hosts": [FailoverMesh::authority_template()]}]}}),
            );
        }
        FailoverMesh {
            seed,
            prefix: "mesh".into(),
            degraded,
            namespaces,
            objects,
            world,
            clients,
            gateway,
            health,
        }
    }
}

/// Splits the sidecars' VirtualService for `frontend` into a root that keeps its hosts and
/// delegates every request to `frontend-routes` (no hosts) holding its routes: Istio's
/// VirtualService delegation. The delegate is opted in as the root was, or sometimes not.
fn delegate(objects: &mut Vec<Value>, alert: &str, rng: &mut Rng) {
    let Some(at) = find_object(objects, "VirtualService", alert, SERVICE) else {
        return;
    };
    let root = &mut objects[at];
    let opted = root["metadata"]["labels"].get(OPT_IN.0).is_some() != rng.chance(15);
    let spec = json!({"http": root["spec"]["http"].clone()});
    root["spec"]["http"] = json!([{"name": "delegated",
        "delegate": {"name": format!("{SERVICE}-routes"), "namespace": alert}}]);
    objects.push(
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": metadata(&format!("{SERVICE}-routes"), alert, opted), "spec": spec}),
    );
}

/// A Service on [`PORT`] selecting `selector`, with a fixed cluster IP (`10.96.0.<n>`).
fn service(name: &str, namespace: &str, selector: Value, n: usize) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": selector, "clusterIP": format!("10.96.0.{}", n + 10),
                 "ports": [{"name": "http", "port": PORT}]}})
}

/// The metadata of a stored object, with the opt-in label when `opted_in`.
fn metadata(name: &str, namespace: &str, opted_in: bool) -> Value {
    let mut meta = json!({"name": name, "namespace": namespace});
    if opted_in {
        meta["labels"] = json!({OPT_IN.0: OPT_IN.1});
    }
    meta
}

impl Gen {
    /// `frontend`'s Service and pods: one or two `v1` pods per region, and a `v2` in every
    /// region or (a canary) in some; returns the regions with a `v2`.
    fn pods(&mut self, namespace: &str, world: &mut Vec<Value>) -> Vec<String> {
        world.push(service(SERVICE, namespace, json!({"app": SERVICE}), 1));
        let v2: Vec<String> = if !self.versions && self.rng.chance(60) {
            Vec::new()
        } else if self.rng.chance(55) {
            REGIONS.iter().map(|r| (*r).to_owned()).collect()
        } else {
            pick_regions(&mut self.rng, 1, 2)
        };
        for (i, region) in REGIONS.iter().enumerate() {
            let mut pods: Vec<&str> = vec!["v1"; self.rng.range(1, 2)];
            if v2.iter().any(|r| r == region) {
                pods.push("v2");
            }
            for (j, version) in pods.into_iter().enumerate() {
                let ip = format!("10.{}.0.{}", i + 1, j + 10);
                let name = format!("{SERVICE}-{version}-{}", ip.replace('.', "-"));
                let labels = json!({"app": SERVICE, "version": version, "region": region});
                world.push(ready_pod(namespace, &name, labels, region, &ip));
            }
        }
        v2
    }

    /// The rule for `frontend` in its namespace: subsets, a traffic policy, subset policies.
    fn main_rule(&mut self, namespace: &str, v2_regions: &[String]) -> Value {
        let host = if self.rng.chance(70) {
            SERVICE.to_owned()
        } else {
            format!("{SERVICE}.{namespace}.svc.cluster.local")
        };
        let mut subsets = Vec::new();
        if let Some(naming) = self.naming {
            for region in REGIONS {
                subsets.push(json!({"name": subset_name(naming, region),
                                    "labels": {REGION_LABEL: region}}));
            }
        }
        if self.versions {
            subsets.push(json!({"name": "v1", "labels": {"version": "v1"}}));
            if !v2_regions.is_empty() || self.rng.chance(30) {
                subsets.push(json!({"name": "v2", "labels": {"version": "v2"}}));
            }
        }
        for subset in &mut subsets {
            if self.rng.chance(12) {
                subset["trafficPolicy"] = self.subset_policy();
            }
        }
        let mut spec = json!({ "host": host });
        if !subsets.is_empty() {
            spec["subsets"] = Value::Array(subsets);
        }
        if self.rng.chance(65) {
            spec["trafficPolicy"] = self.policy(true);
        }
        let opted_in = self.rng.chance(85);
        json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
               "metadata": metadata(SERVICE, namespace, opted_in), "spec": spec})
    }

    /// A second rule for `frontend` in `namespace`: a policy of its own, sometimes a
    /// subset.
    fn extra_rule(&mut self, namespace: &str) -> Value {
        let alert = FailoverMesh::alert_template();
        let host = if *namespace == alert && self.rng.chance(50) {
            SERVICE.to_owned()
        } else {
            format!("{SERVICE}.{alert}.svc.cluster.local")
        };
        let name = *self
            .rng
            .pick(&["a-frontend", "frontend-policy", "zz-frontend"]);
        let mut spec = json!({"host": host, "trafficPolicy": self.policy(true)});
        if self.rng.chance(30) {
            spec["subsets"] = json!([{"name": "canary", "labels": {"version": "v2"}}]);
        }
        let opted_in = self.rng.chance(50);
        json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
               "metadata": metadata(name, namespace, opted_in), "spec": spec})
    }

    /// A traffic policy (never empty); port-level settings only at the top.
    fn policy(&mut self, top: bool) -> Value {
        let mut policy = Map::new();
        let locality = self.rng.below(6);
        let mut lb = Map::new();
        if self.rng.chance(30) {
            lb.insert(
                "simple".into(),
                json!(*self.rng.pick(&["ROUND_ROBIN", "LEAST_REQUEST"])),
            );
        }
        let outlier = match locality {
            0 => self.rng.chance(25),
            1 => {
                lb.insert("localityLbSetting".into(), json!({"enabled": false}));
                self.rng.chance(40)
            }
            2 => {
                lb.insert("localityLbSetting".into(), self.failover());
                self.rng.chance(55)
            }
            3 => {
                let to = self.weights();
                lb.insert(
                    "localityLbSetting".into(),
                    json!({"distribute": [{"from": "*", "to": to}]}),
                );
                self.rng.chance(30)
            }
            4 => {
                let count = self.rng.range(1, 3);
                let from = self.rng.sample(&REGIONS, count);
                let entries: Vec<Value> = from
                    .into_iter()
                    .map(|f| json!({"from": format!("{f}/*"), "to": self.weights()}))
                    .collect();
                lb.insert("localityLbSetting".into(), json!({ "distribute": entries }));
                self.rng.chance(30)
            }
            _ => {
                lb.insert("localityLbSetting".into(), json!({"enabled": true}));
                self.rng.chance(50)
            }
        };
        if !lb.is_empty() {
            policy.insert("loadBalancer".into(), Value::Object(lb));
        }
        if outlier {
            let errors = *self.rng.pick(&[1, 5, 7]);
            policy.insert(
                "outlierDetection".into(),
                json!({"consecutive5xxErrors": errors, "interval": "10s", "baseEjectionTime": "30s"}),
            );
        }
        if self.rng.chance(15) {
            policy.insert(
                "connectionPool".into(),
                json!({"tcp": {"maxConnections": 100}}),
            );
        }
        if self.rng.chance(10) {
            policy.insert("tls".into(), json!({"mode": "ISTIO_MUTUAL"}));
        }
        if top && self.rng.chance(25) {
            let mut entry = self.policy(false);
            if let Some(map) = entry.as_object_mut() {
                map.remove("portLevelSettings");
            }
            entry["port"] = json!({ "number": PORT });
            policy.insert("portLevelSettings".into(), json!([entry]));
        }
        if policy.is_empty() {
            policy.insert("tls".into(), json!({"mode": "ISTIO_MUTUAL"}));
        }
        Value::Object(policy)
    }

    /// A subset's policy: a load balancer of its own (which replaces the top level's).
    fn subset_policy(&mut self) -> Value {
        match self.rng.below(3) {
            0 => json!({"loadBalancer": {"simple": "LEAST_REQUEST"}}),
            1 => json!({"loadBalancer": {"localityLbSetting": {"enabled": false}}}),
            _ => json!({"loadBalancer": {"localityLbSetting": {"distribute": [
                {"from": "*", "to": self.weights()}]}}}),
        }
    }

    /// `failover` entries: from some regions, each to another.
    fn failover(&mut self) -> Value {
        let count = self.rng.range(1, 3);
        let from = self.rng.sample(&REGIONS, count);
        let entries: Vec<Value> = from
            .into_iter()
            .map(|f| {
                let others: Vec<&str> = REGIONS.iter().copied().filter(|r| *r != f).collect();
                json!({"from": f, "to": *self.rng.pick(&others)})
            })
            .collect();
        json!({ "failover": entries })
    }

    /// `distribute` weights: one to three regions, weights 1 to 100 summing to 100.
    fn weights(&mut self) -> Value {
        let count = self.rng.range(1, 3);
        let regions = self.rng.sample(&REGIONS, count);
        let weights = self.split_100(count);
        let map: Map<String, Value> = regions
            .into_iter()
            .zip(weights)
            .map(|(r, w)| (format!("{r}/*"), json!(w)))
            .collect();
        Value::Object(map)
    }

    /// `count` positive integers summing to 100.
    fn split_100(&mut self, count: usize) -> Vec<i64> {
        let mut cuts: Vec<i64> = Vec::new();
        while cuts.len() + 1 < count {
            let cut = i64::try_from(self.rng.range(1, 99)).expect("small");
            if !cuts.contains(&cut) {
                cuts.push(cut);
            }
        }
        cuts.sort_unstable();
        let mut out = Vec::new();
        let mut last = 0;
        for cut in cuts.into_iter().chain([100]) {
            out.push(cut - last);
            last = cut;
        }
        out
    }

    /// The VirtualServices for `frontend`, and whether one is bound to the gateway.
    fn virtual_services(
        &mut self,
        split: Split,
        degraded: &str,
        v2_regions: &[String],
    ) -> (Vec<Value>, bool) {
        let alert = FailoverMesh::alert_template();
        if split == Split::None && self.rng.chance(55) {
            return (Vec::new(), false);
        }
        let mut http = Vec::new();
        if self.rng.chance(35) {
            // A tenant pinned to one region's subset, one version, or the whole Service.
            let destination = match (self.naming, self.versions) {
                (Some(naming), _) if self.rng.chance(65) => {
                    let region = if self.rng.chance(50) {
                        degraded
                    } else {
                        self.rng.pick(&REGIONS)
                    };
                    json!({"host": SERVICE, "subset": subset_name(naming, region)})
                }
                (_, true) => {
                    let version = if v2_regions.is_empty() { "v1" } else { "v2" };
                    json!({"host": SERVICE, "subset": version})
                }
                _ => json!({ "host": SERVICE }),
            };
            http.push(json!({"name": "tenant",
                "match": [{"headers": {"x-tenant": {"exact": "acme"}}}],
                "route": [{"destination": destination}]}));
        }
        let default = match split {
            Split::None => {
                let destination = if self.versions && self.rng.chance(50) {
                    json!({"host": SERVICE, "subset": "v1"})
                } else {
                    json!({ "host": SERVICE })
                };
                json!({"route": [{"destination": destination}]})
            }
            Split::Subsets | Split::Hosts => {
                let count = self.rng.range(2, 3);
                let mut regions = self.rng.sample(&REGIONS, count);
                if !regions.contains(&degraded) && self.rng.chance(80) {
                    regions[0] = REGIONS
                        .iter()
                        .copied()
                        .find(|r| *r == degraded)
                        .expect("a region");
                }
                let mut weights = self.split_100(count);
                if self.rng.chance(8) {
                    // Already failed over by hand: the degraded region has weight 0.
                    if let Some(at) = regions.iter().position(|r| *r == degraded) {
                        let moved = weights[at];
                        weights[at] = 0;
                        weights[(at + 1) % count] += moved;
                    }
                }
                let route: Vec<Value> = regions
                    .iter()
                    .zip(weights)
                    .map(|(region, weight)| {
                        let destination = match (split, self.naming) {
                            (Split::Subsets, Some(naming)) => {
                                json!({"host": SERVICE, "subset": subset_name(naming, region)})
                            }
                            _ => json!({ "host": format!("{SERVICE}-{region}") }),
                        };
                        json!({"destination": destination, "weight": weight})
                    })
                    .collect();
                json!({"name": "split", "route": route})
            }
        };
        http.push(default);
        let binding = self.rng.below(20);
        let mut spec = json!({"hosts": [SERVICE], "http": http});
        let gateway = format!("{}/public", root_template());
        let authority = FailoverMesh::authority_template();
        let gateway_bound = match binding {
            0..=3 => {
                spec["hosts"] = json!([authority]);
                spec["gateways"] = json!([gateway]);
                true
            }
            4..=6 => {
                spec["hosts"] = json!([SERVICE, authority]);
                spec["gateways"] = json!([gateway, "mesh"]);
                true
            }
            _ => false,
        };
        let opted_in = self.rng.chance(80);
        let name = if gateway_bound {
            "frontend-public"
        } else {
            SERVICE
        };
        let mut out = vec![
            json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": metadata(name, &alert, opted_in), "spec": spec}),
        ];
        if !gateway_bound && self.rng.chance(15) {
            // A gateway route of its own, straight to the Service.
            out.push(
                json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                "metadata": metadata("frontend-public", &alert, self.rng.chance(50)),
                "spec": {"hosts": [authority], "gateways": [gateway],
                         "http": [{"route": [{"destination": {"host": SERVICE}}]}]}}),
            );
            return (out, true);
        }
        (out, gateway_bound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meshes_are_valid_and_fixed_by_the_seed() {
        for seed in 0..300 {
            let mesh = FailoverMesh::generate(seed);
            assert_eq!(mesh, FailoverMesh::generate(seed));
            assert_eq!(mesh.invalid(), None, "seed {seed}:\n{}", mesh.to_yaml());
        }
    }
}
