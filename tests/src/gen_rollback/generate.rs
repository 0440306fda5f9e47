//! Drawing one mesh from a seed.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{FAILING, GatewaySpec, OPT_IN, PORT, PREFIX, RollbackMesh, SERVICE};
use crate::generated::{find_object, root_template};
use crate::istio_oracle::ready_pod;
use crate::mesh_gen::rng::Rng;
use crate::mesh_gen::{ClientSpec, pick_namespaces, pick_regions};

/// Versions in the order of the naming schemes below.
const VERSIONS: [&str; 4] = ["v0", "v1", "v2", "v3"];
/// Subset names per version (v0, v1, v2, v3): subsets are named anything.
const SCHEMES: [[&str; 4]; 4] = [
    ["v0", "v1", "v2", "v3"],
    ["previous", "stable", "canary", "next"],
    ["old", "blue", "green", "beta"],
    ["checkout-v0", "checkout-v1", "checkout-v2", "checkout-v3"],
];
const CLIENT_NAMESPACES: [&str; 3] = ["web", "jobs", "mobile"];
const APPS: [&str; 4] = ["storefront", "orders", "cart", "search"];

struct Gen {
    rng: Rng,
    regions: Vec<String>,
    /// Versions with pods (v1 and v2 always).
    versions: Vec<&'static str>,
    scheme: [&'static str; 4],
    next_ip: u32,
}

fn index(version: &str) -> usize {
    VERSIONS
        .iter()
        .position(|v| *v == version)
        .expect("a known version")
}

impl Gen {
    fn subset(&self, version: &str) -> &'static str {
        self.scheme[index(version)]
    }

    /// A host for `checkout` as written in the alert's namespace: short or FQDN.
    fn host(&mut self) -> String {
        if self.rng.chance(60) {
            SERVICE.to_owned()
        } else {
            fqdn()
        }
    }

    fn destination(&mut self, version: &str, host: Option<&str>) -> Value {
        let host = host.map_or_else(|| self.host(), str::to_owned);
        json!({"host": host, "subset": self.subset(version)})
    }

    /// Subset definitions for every version with pods, in a random order; `stable_to`
    /// redefines the stable subset's labels (another version) when given.
    fn subsets(&mut self, stable_to: Option<&str>) -> Vec<Value> {
        let versions = self.versions.clone();
        let n = versions.len();
        self.rng
            .sample(&versions, n)
            .into_iter()
            .map(|v| {
                let labelled = if v == "v1" { stable_to.unwrap_or(v) } else { v };
                json!({"name": self.subset(v), "labels": {"version": labelled}})
            })
            .collect()
    }

    /// A weighted split over `versions` (weights summing to 100, zeros allowed).
    /// v1, and the failing version too `percent` % of the time.
    fn stable_and_maybe_failing(&mut self, percent: usize) -> Vec<&'static str> {
        if self.rng.chance(percent) {
            vec!["v1", FAILING]
        } else {
            vec!["v1"]
        }
    }

    fn split(&mut self, versions: &[&str], host: Option<&str>) -> Vec<Value> {
        let mut left = 100;
        let mut out = Vec::new();
        for (i, v) in versions.iter().enumerate() {
            let weight = if i + 1 == versions.len() {
                left
            } else {
                let w = *self.rng.pick(&[0, 10, 20, 50, 80, 90, 100]);
                w.min(left)
            };
            left -= weight;
            out.push(json!({"destination": self.destination(v, host), "weight": weight}));
        }
        out
    }

    fn ip(&mut self, version: &str) -> String {
        self.next_ip += 1;
        format!(
            "10.{}.{}.{}",
            10 + index(version),
            self.next_ip / 200,
            10 + self.next_ip % 200
        )
    }
}

fn fqdn() -> String {
    format!("{SERVICE}.{PREFIX}-shop.svc.cluster.local")
}

fn meta(name: &str, namespace: &str, opted_in: bool, annotations: Option<Value>) -> Value {
    let mut m = json!({"name": name, "namespace": namespace});
    if opted_in {
        m["labels"] = json!({OPT_IN.0: OPT_IN.1});
    }
    if let Some(a) = annotations {
        m["annotations"] = a;
    }
    m
}

fn rule(name: &str, namespace: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
           "metadata": meta(name, namespace, true, None), "spec": spec})
}

fn virtual_service(metadata: Value, spec: Value) -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
           "metadata": metadata, "spec": spec})
}

fn pod(namespace: &str, labels: &BTreeMap<&str, &str>, region: &str, ip: &str) -> Value {
    let name = format!("{SERVICE}-{}", ip.replace('.', "-"));
    ready_pod(namespace, &name, json!(labels), region, ip)
}

impl RollbackMesh {
    /// The mesh of `seed` (prefix `mesh` until [`RollbackMesh::with_prefix`]).
    pub fn generate(seed: u64) -> RollbackMesh {
        let mut rng = Rng::new(seed);
        let regions = pick_regions(&mut rng, 2, 3);
        let mut versions = vec!["v1", FAILING];
        if rng.chance(35) {
            versions.insert(0, "v0");
        }
        if rng.chance(25) {
            versions.push("v3");
        }
        let scheme = *rng.pick(&SCHEMES);
        let mut g = Gen {
            rng,
            regions,
            versions,
            scheme,
            next_ip: 0,
        };
        let alert = format!("{PREFIX}-shop");
        let root = root_template();
        let client_namespaces = pick_namespaces(&mut g.rng, &CLIENT_NAMESPACES, 1, 2);
        let mut namespaces = vec![alert.clone()];
        namespaces.extend(client_namespaces.iter().cloned());
        namespaces.push(root.clone());

        // checkout's pods: v1 somewhere in every region or most, the others in 1-2 regions.
        let mut world = Vec::new();
        for version in g.versions.clone() {
            let regions = match version {
                "v1" if g.rng.chance(70) => g.regions.clone(),
                "v1" | "v2" => {
                    let n = g.rng.range(1, 2);
                    g.rng.sample(&g.regions.clone(), n)
                }
                _ => vec![g.rng.pick(&g.regions).clone()],
            };
            for region in regions {
                let ip = g.ip(version);
                let labels = BTreeMap::from([("app", SERVICE), ("version", version)]);
                world.push(pod(&alert, &labels, &region, &ip));
            }
        }

        let mut objects = vec![json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": SERVICE, "namespace": alert, "labels": {"app": SERVICE}},
            "spec": {"selector": {"app": SERVICE},
                     "ports": [{"name": "http", "port": PORT}]}})];

        // DestinationRules.
        let export = *g.rng.pick(&[None, None, None, None, Some("*"), Some(".")]);
        let mut spec = json!({"host": g.host(), "subsets": g.subsets(None)});
        if let Some(e) = export {
            spec["exportTo"] = json!([e]);
        }
        objects.push(rule(SERVICE, &alert, spec));
        let has_v0 = g.versions.contains(&"v0");
        if g.rng.chance(15) {
            // A second rule in the service's namespace (created after, named after): the
            // same subsets, sometimes stable redefined, sometimes a policy of its own.
            let stable_to = (has_v0 && g.rng.chance(40)).then_some("v0");
            let mut spec = json!({"host": g.host(), "subsets": g.subsets(stable_to)});
            if g.rng.chance(50) {
                spec["trafficPolicy"] =
                    json!({"connectionPool": {"http": {"http1MaxPendingRequests": 32}}});
            }
            if let Some(e) = export.filter(|_| g.rng.chance(70)) {
                spec["exportTo"] = json!([e]);
            }
            objects.push(rule("checkout-extra", &alert, spec));
        }
        if export == Some(".") || g.rng.chance(20) {
            // The root namespace's rule: what clients elsewhere fall back on.
            let stable_to = (has_v0 && g.rng.chance(15)).then_some("v0");
            let spec = json!({"host": fqdn(), "subsets": g.subsets(stable_to)});
            objects.push(rule(SERVICE, &root, spec));
        }
        if g.rng.chance(25) {
            // A client namespace's own rule, rarely one whose "stable" is the failing version.
            let ns = g.rng.pick(&client_namespaces).clone();
            let stable_to = if g.rng.chance(15) {
                Some(FAILING)
            } else if has_v0 && g.rng.chance(20) {
                Some("v0")
            } else {
                None
            };
            let mut spec = json!({"host": fqdn(), "subsets": g.subsets(stable_to)});
            if g.rng.chance(50) {
                spec["exportTo"] = json!(["."]);
            }
            objects.push(rule("checkout-local", &ns, spec));
        }

        // The opted-in VirtualService (sometimes not opted in).
        let others: Vec<&str> = g
            .versions
            .iter()
            .copied()
            .filter(|v| *v == "v0" || *v == "v3")
            .collect();
        let mut http = Vec::new();
        if g.rng.chance(45) {
            let matchers = [
                ("testers", json!({"headers": {"x-canary": {"exact": "1"}}})),
                ("qa", json!({"headers": {"end-user": {"prefix": "qa-"}}})),
                ("beta", json!({"uri": {"prefix": "/beta"}})),
            ];
            let (name, matcher) = g.rng.pick(&matchers).clone();
            http.push(json!({"name": name, "match": [matcher],
                             "route": [{"destination": g.destination(FAILING, None)}]}));
        }
        if !others.is_empty() && g.rng.chance(25) {
            let v = *g.rng.pick(&others);
            http.push(
                json!({"name": "pinned", "match": [{"headers": {"x-pin": {"exact": v}}}],
                             "route": [{"destination": g.destination(v, None)}]}),
            );
        }
        let mut last = match g.rng.below(10) {
            0 => json!({"route": [{"destination": g.destination("v1", None)}]}),
            1 if !others.is_empty() => {
                let mut vs = vec!["v1", FAILING, *g.rng.pick(&others)];
                let n = vs.len();
                vs = g.rng.sample(&vs, n);
                json!({"route": g.split(&vs, None)})
            }
            2 => json!({"route": g.split(&[FAILING, "v1"], None)}),
            _ => json!({"route": g.split(&["v1", FAILING], None)}),
        };
        if g.rng.chance(30) {
            last["name"] = json!("default");
        }
        if g.rng.chance(20) {
            let mut target = vec!["v1", FAILING];
            target.extend(others.iter().copied());
            let v = *g.rng.pick(&target);
            last["mirror"] = g.destination(v, None);
            if let Some(p) = *g.rng.pick(&[None, Some(0.0), Some(10.0), Some(100.0)]) {
                last["mirrorPercentage"] = json!({"value": p});
            }
        }
        http.push(last);
        let mut annotations = None;
        if g.rng.chance(20) {
            let mut named = vec!["v1"];
            named.extend(others.iter().copied());
            let v = if g.rng.chance(10) {
                FAILING
            } else {
                *g.rng.pick(&named)
            };
            annotations = Some(json!({"auto-remediation.io/stable-subset": g.subset(v)}));
        }
        let mut spec = json!({"hosts": [g.host()], "http": http});
        match g.rng.below(20) {
            0 => spec["exportTo"] = json!(["."]),
            1 => spec["exportTo"] = json!(["*"]),
            2..=4 => spec["gateways"] = json!(["mesh"]),
            _ => {}
        }
        let opted = !g.rng.chance(5);
        objects.push(virtual_service(
            meta(SERVICE, &alert, opted, annotations),
            spec,
        ));

        // Other VirtualServices.
        if g.rng.chance(5) {
            // A twin binding the same host to mesh.
            let spec =
                json!({"hosts": [g.host()], "http": [{"route": g.split(&["v1", FAILING], None)}]});
            objects.push(virtual_service(
                meta("checkout-twin", &alert, true, None),
                spec,
            ));
        }
        let mut gateway = None;
        if g.rng.chance(20) {
            let versions = g.stable_and_maybe_failing(70);
            let route = g.split(&versions, None);
            let spec = json!({"hosts": [format!("{PREFIX}.example.com")],
                              "gateways": [format!("{root}/public")],
                              "http": [{"route": route}]});
            let opted = g.rng.chance(80);
            objects.push(virtual_service(meta("public", &alert, opted, None), spec));
            world.push(
                json!({"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
                "metadata": {"name": "public", "namespace": root},
                "spec": {"selector": {"istio": "ingressgateway"}, "servers": [
                    {"port": {"number": 80, "name": "http", "protocol": "HTTP"},
                     "hosts": [format!("{PREFIX}.example.com")]}]}}),
            );
            gateway = Some(GatewaySpec {
                name: "ingress".into(),
                namespace: root.clone(),
                region: g.rng.pick(&g.regions).clone(),
            });
        }
        if g.rng.chance(10) {
            // Not opted in, for a literal host of its own.
            let versions = g.stable_and_maybe_failing(50);
            let route = g.split(&versions, None);
            let spec = json!({"hosts": [format!("checkout.{PREFIX}.internal")],
                              "http": [{"route": route}]});
            objects.push(virtual_service(
                meta("checkout-internal", &alert, false, None),
                spec,
            ));
        }
        if g.rng.chance(15) {
            // A client namespace's own VirtualService for checkout (exportTo ".").
            let ns = g.rng.pick(&client_namespaces).clone();
            let host = fqdn();
            let route = if g.rng.chance(50) {
                g.split(&["v1", FAILING], Some(&host))
            } else {
                vec![json!({"destination": g.destination("v1", Some(&host))})]
            };
            let spec = json!({"hosts": [host], "exportTo": ["."], "http": [{"route": route}]});
            let opted = g.rng.chance(50);
            objects.push(virtual_service(
                meta("checkout-mine", &ns, opted, None),
                spec,
            ));
        }

        // Sidecar clients.
        let mut clients = Vec::new();
        let mut with_clients = vec![alert.clone()];
        with_clients.extend(client_namespaces.iter().cloned());
        for ns in &with_clients {
            let short = ns.trim_start_matches(&format!("{PREFIX}-")).to_owned();
            for i in 0..g.rng.range(1, 2) {
                let app = *g.rng.pick(&APPS);
                let region = g.rng.pick(&g.regions).clone();
                clients.push(ClientSpec {
                    name: format!("{short}-{app}-{i}"),
                    namespace: ns.clone(),
                    region,
                    labels: BTreeMap::from([
                        ("app".to_owned(), app.to_owned()),
                        ("version".to_owned(), "v1".to_owned()),
                    ]),
                });
            }
        }

        if g.rng.chance(15) {
            delegate(&mut objects, &alert, &client_namespaces, &mut g.rng);
        }

        let service_label = if g.rng.chance(70) {
            SERVICE.to_owned()
        } else {
            fqdn()
        };
        RollbackMesh {
            seed,
            prefix: "mesh".into(),
            regions: g.regions,
            namespaces,
            alert_namespace: alert,
            service_label,
            objects,
            world,
            clients,
            gateway,
        }
    }
}

/// Splits the service's VirtualService into a root that keeps its hosts (and the metadata,
/// opted in or not) and delegates every request to a VirtualService without hosts holding
/// its routes: Istio's VirtualService delegation. The delegate is usually in the alert's
/// namespace, opted in as the root was; sometimes in a client namespace, or not opted in.
fn delegate(objects: &mut Vec<Value>, alert: &str, client_namespaces: &[String], rng: &mut Rng) {
    let Some(at) = find_object(objects, "VirtualService", alert, SERVICE) else {
        return;
    };
    let main = &mut objects[at];
    let namespace = if rng.chance(15) {
        rng.pick(client_namespaces).clone()
    } else {
        alert.to_owned()
    };
    let mut metadata = main["metadata"].clone();
    metadata["name"] = json!("checkout-routes");
    metadata["namespace"] = json!(namespace);
    if rng.chance(15) {
        metadata["labels"] = json!({});
    }
    let mut spec = json!({"http": main["spec"]["http"].clone()});
    if namespace != alert {
        // Short hosts resolve in the delegate's own namespace: name the service fully.
        for route in spec["http"].as_array_mut().into_iter().flatten() {
            for destination in route["route"].as_array_mut().into_iter().flatten() {
                destination["destination"]["host"] = json!(fqdn());
            }
            if route.get("mirror").is_some() {
                route["mirror"]["host"] = json!(fqdn());
            }
        }
    }
    let mut root = json!({"name": "delegated", "delegate": {"name": "checkout-routes", "namespace": namespace}});
    if rng.chance(30) {
        root["match"] = json!([{"uri": {"prefix": "/"}}]);
    }
    main["spec"]["http"] = json!([root]);
    if let Some(annotations) = main["metadata"]
        .get_mut("annotations")
        .and_then(Value::as_object_mut)
    {
        annotations.remove("auto-remediation.io/stable-subset");
    }
    // Created after the root, as a person would add it.
    objects.push(virtual_service(metadata, spec));
}
