//! error-rollback on generated meshes, judged by Istio's config compiler.
//!
//! For seeds `GENERATED_SEED..GENERATED_SEED + GENERATED_MESHES` (defaults below), each
//! generated mesh ([`RollbackMesh`]: `checkout` with a failing v2 beside a stable v1, its
//! DestinationRules and VirtualServices, sidecars and sometimes an ingress gateway) is
//! created on the real API server in namespaces of its own and compiled for every proxy;
//! the function runs on its alert (with the mesh's root namespace as
//! `ISTIO_ROOT_NAMESPACE`); everything is read back and compiled again; every changed
//! VirtualService is reverted through the pipeline, and compiled once more. For every proxy:
//!
//! - applied: no route (weight above 0) reaches a pod of the failing version; no mirror of
//!   a VirtualService the proxy takes copies requests to it (the oracle shows no mirror
//!   policies, so the stored VirtualServices are read and their mirror's cluster looked up in
//!   the proxy's compiled config); every route to checkout still reaches some pod;
//! - refused (failed or skipped): no stored object changed and Istio compiles the same;
//! - reverting every changed object gives back the exact compiled configuration.
//!
//! A violation is shrunk to a minimal mesh (one per class) and printed as YAML with its
//! seed; `GENERATED_REPORT=<file>` also writes them there as Markdown.

use std::collections::{BTreeMap, BTreeSet};

use mesh_remediation::remediation::ErrorRollback;
use mesh_remediation::report::Outcome;
use remediation_testkit::gen_rollback::{FAILING, PORT, RollbackMesh};
use remediation_testkit::generated::cycle::{self, Cycle, Function};
use remediation_testkit::generated::suite::{self, Seeds, fail_on_violations};
use remediation_testkit::generated::{Findings, Harness, ShrinkLimits, key, outcome_context};
use remediation_testkit::istio_oracle::{Compiled, ProxyConfig, Route};
use remediation_testkit::mesh_gen::Violation;
use serde_json::{Value, json};

/// The first seed when `GENERATED_SEED` is not set.
const DEFAULT_SEED: u64 = 20_261_204;
/// Meshes when `GENERATED_MESHES` is not set.
const DEFAULT_MESHES: u64 = 100;
/// Shrinking one class of violation runs at most this many candidates, for about this long.
const SHRINK: ShrinkLimits = ShrinkLimits {
    max_candidates: 160,
    chunk: 16,
    max_time: std::time::Duration::from_secs(120),
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn error_rollback_keeps_its_promises_on_generated_meshes() {
    let seeds = Seeds::from_env("error-rollback", DEFAULT_SEED, DEFAULT_MESHES);
    let harness = Harness::connect(suite::kubeconfig(), "genrb-home").await;
    let meshes = seeds.meshes(RollbackMesh::generate);
    let mut tally = Tally::default();
    let found = suite::run_in_groups(&meshes, "rolled back", async |group: Vec<RollbackMesh>| {
        let (violations, outcomes) = run_meshes(&harness, group.clone(), true).await;
        tally.add(&group, &outcomes);
        violations
    })
    .await;
    tally.print();
    let limits = suite::shrink_limits(SHRINK);
    fail_on_violations("error-rollback", seeds, meshes, found, limits, async |c| {
        run_meshes(&harness, c, false).await.0
    })
    .await;
}

/// Outcomes by kind and by the first words of their reason, for the first run's summary.
#[derive(Default)]
struct Tally(BTreeMap<String, usize>);

impl Tally {
    fn add(&mut self, meshes: &[RollbackMesh], outcomes: &[Option<Outcome>]) {
        for (mesh, outcome) in meshes.iter().zip(outcomes) {
            let Some(outcome) = outcome else {
                continue;
            };
            let why = outcome.reason.as_deref().unwrap_or_default();
            let why = why.replace(&mesh.prefix, "{P}");
            let short: String = why.chars().take(110).collect();
            *self
                .0
                .entry(format!("{} {short}", outcome.outcome.as_str()))
                .or_default() += 1;
        }
    }

    fn print(&self) {
        for (what, n) in &self.0 {
            println!("  {n:4} {what}");
        }
    }
}

/// Runs every mesh through the whole cycle; each one's violations and outcome.
async fn run_meshes(
    h: &Harness,
    meshes: Vec<RollbackMesh>,
    verbose: bool,
) -> (Vec<Vec<Violation>>, Vec<Option<Outcome>>) {
    let cycle = Cycle::run(h, &meshes, &Rollback, verbose).await;
    (cycle.violations(&meshes, check), cycle.outcomes)
}

/// error-rollback, on the failing version of `checkout`.
struct Rollback;

impl Function<RollbackMesh> for Rollback {
    const NAME: &'static str = "error-rollback";
    type Remediation = ErrorRollback;

    fn remediation(&self, _mesh: &RollbackMesh) -> ErrorRollback {
        ErrorRollback
    }

    /// Its namespace, `service` and the failing `version`.
    fn alert_labels(&self, mesh: &RollbackMesh) -> Value {
        json!({"namespace": mesh.alert_ns(), "service": mesh.service_value(),
               "version": FAILING})
    }

    /// A route that reaches no endpoint before the function acts.
    fn unusable(&self, mesh: &RollbackMesh, before: &Compiled) -> Option<String> {
        let why = dead_routes(mesh, before).into_iter().next()?;
        Some(format!("before the function: {why}"))
    }
}

/// Everything known about one mesh's run.
type Trial<'a> = cycle::Trial<'a, RollbackMesh>;

fn check(t: &Trial) -> Vec<Violation> {
    t.violations(&outcome_context(t.outcome), |after, applied, f| {
        if !applied {
            return;
        }
        if t.changed.is_empty() {
            f.add("applied-but-unchanged", "no stored object changed".into());
        }
        failing_unreached(t, after, f);
        mirrors_unreached(t, after, f);
        for why in dead_routes(t.mesh, after) {
            f.add("route-without-endpoints", why);
        }
    })
}

/// `checkout`'s clusters (`outbound|8080|<subset>|<fqdn>`) a route sends to (weight > 0).
fn checkout_clusters<'a>(mesh: &RollbackMesh, route: &'a Route) -> BTreeSet<&'a String> {
    let prefix = format!("outbound|{PORT}|");
    let suffix = format!("|{}", mesh.fqdn());
    route
        .clusters
        .iter()
        .filter(|c| c.weight > 0 && c.name.starts_with(&prefix) && c.name.ends_with(&suffix))
        .map(|c| &c.name)
        .collect()
}

fn describe(proxy: &ProxyConfig, route: &Route) -> String {
    format!(
        "{} route {} {} match {}",
        proxy.name,
        route.route_config,
        route.domains.first().map_or("?", String::as_str),
        route
            .route_match
            .as_ref()
            .map_or("-".into(), Value::to_string)
    )
}

fn ips(proxy: &ProxyConfig, cluster: &str) -> BTreeSet<String> {
    if !proxy.clusters.contains_key(cluster) {
        return BTreeSet::new();
    }
    proxy
        .endpoints_of(&BTreeSet::from([cluster.to_owned()]))
        .into_iter()
        .map(|(ip, _)| ip)
        .collect()
}

/// Applied: no route of any proxy (any domain, so literal hosts and the gateway's too) sends
/// requests to a cluster of checkout holding a pod of the failing version.
fn failing_unreached(t: &Trial, after: &Compiled, f: &mut Findings) {
    let failing = t.mesh.pods_of(FAILING);
    for client in t.mesh.proxies() {
        let proxy = after.proxy(client.name);
        for route in &proxy.routes {
            for cluster in checkout_clusters(t.mesh, route) {
                let hit: Vec<String> = ips(proxy, cluster)
                    .intersection(&failing)
                    .cloned()
                    .collect();
                if !hit.is_empty() {
                    f.add(
                        "failing-version-reached",
                        format!(
                            "{} ({}): {cluster} reaches {}",
                            describe(proxy, route),
                            client.namespace,
                            hit.join(",")
                        ),
                    );
                }
            }
        }
    }
}

/// Every route to checkout has endpoints behind each of its clusters, and every sidecar
/// reaches some pod of checkout. Also the precondition of a generated mesh (before).
fn dead_routes(mesh: &RollbackMesh, compiled: &Compiled) -> Vec<String> {
    let mut out = Vec::new();
    for client in mesh.proxies() {
        let proxy = compiled.proxy(client.name);
        for route in &proxy.routes {
            for cluster in checkout_clusters(mesh, route) {
                if ips(proxy, cluster).is_empty() {
                    out.push(format!(
                        "{}: {cluster} has no endpoint",
                        describe(proxy, route)
                    ));
                }
            }
        }
        let reached: BTreeSet<String> = proxy
            .clusters_receiving(&mesh.fqdn(), PORT)
            .iter()
            .flat_map(|c| ips(proxy, c))
            .collect();
        if client.gateway_labels.is_none() && reached.is_empty() {
            out.push(format!("{} reaches no pod of {}", client.name, mesh.fqdn()));
        }
    }
    out
}

/// The fully qualified host of a destination written in `namespace`.
fn qualify(host: &str, namespace: &str) -> String {
    if host.contains('.') {
        host.to_owned()
    } else {
        format!("{host}.{namespace}.svc.cluster.local")
    }
}

/// Whether the proxy (`namespace`, a gateway or not) takes VirtualService `vs`.
fn takes(vs: &Value, namespace: &str, gateway: bool) -> bool {
    let own = vs["metadata"]["namespace"].as_str().unwrap_or_default();
    let exported = vs["spec"]["exportTo"].as_array().is_none_or(|e| {
        e.iter()
            .any(|x| x == "*" || x == namespace || (x == "." && own == namespace))
    });
    let gateways: Vec<&str> = vs["spec"]["gateways"]
        .as_array()
        .map(|g| g.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let bound = if gateway {
        gateways.iter().any(|g| *g != "mesh")
    } else {
        gateways.is_empty() || gateways.contains(&"mesh")
    };
    exported && bound
}

/// Applied: no HTTP route's mirror (percentage not an explicit 0) of a VirtualService a
/// proxy takes sends copies to a cluster of checkout holding a failing pod, as that proxy
/// compiles the mirrored subset.
fn mirrors_unreached(t: &Trial, after: &Compiled, f: &mut Findings) {
    let failing = t.mesh.pods_of(FAILING);
    let fqdn = t.mesh.fqdn();
    for vs in t
        .after_objects
        .iter()
        .filter(|o| o["kind"] == "VirtualService")
    {
        let own = vs["metadata"]["namespace"].as_str().unwrap_or_default();
        for (index, route) in vs["spec"]["http"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let mut mirrors: Vec<(&Value, Option<f64>)> = Vec::new();
            if let Some(m) = route.get("mirror") {
                let percent = route
                    .pointer("/mirrorPercentage/value")
                    .or_else(|| route.get("mirrorPercent"))
                    .and_then(Value::as_f64);
                mirrors.push((m, percent));
            }
            for m in route["mirrors"].as_array().into_iter().flatten() {
                let percent = m.pointer("/percentage/value").and_then(Value::as_f64);
                mirrors.push((&m["destination"], percent));
            }
            for (destination, percent) in mirrors {
                let host = destination["host"].as_str().unwrap_or_default();
                if percent == Some(0.0) || qualify(host, own) != fqdn {
                    continue;
                }
                let subset = destination["subset"].as_str().unwrap_or_default();
                let cluster = format!("outbound|{PORT}|{subset}|{fqdn}");
                for client in t.mesh.proxies() {
                    if !takes(vs, &client.namespace, client.gateway_labels.is_some()) {
                        continue;
                    }
                    let hit: Vec<String> = ips(after.proxy(client.name), &cluster)
                        .intersection(&failing)
                        .cloned()
                        .collect();
                    if !hit.is_empty() {
                        f.add(
                            "mirror-reaches-failing",
                            format!(
                                "{} http[{index}] mirrors to {cluster} ({}) for {}",
                                key(vs),
                                hit.join(","),
                                client.name
                            ),
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn generated_meshes_are_deterministic_and_schema_valid() {
    for seed in DEFAULT_SEED..DEFAULT_SEED + 200 {
        let a = RollbackMesh::generate(seed);
        assert_eq!(a, RollbackMesh::generate(seed), "seed {seed}");
        assert_eq!(a.invalid(), None, "seed {seed}:\n{}", a.to_yaml());
        assert!(!a.pods_of(FAILING).is_empty() && !a.pods_of("v1").is_empty());
        for candidate in a.shrink().iter().take(5) {
            assert!(candidate.size() <= a.size());
        }
    }
}
