//! region-failover on generated meshes, judged by Istio's config compiler.
//!
//! For seeds `GENERATED_SEED..GENERATED_SEED + GENERATED_MESHES` (defaults below), each
//! generated mesh ([`FailoverMesh`]) is created on the real API server in namespaces of its
//! own, compiled for every client proxy (sidecars in every region, and the ingress gateway
//! when a VirtualService is bound to it), the function runs on its alert (`region` the
//! degraded region, the mesh's root namespace as `ISTIO_ROOT_NAMESPACE`, and its
//! `REGION_HEALTH_URLS` if any), everything is read back and compiled again, every object it
//! changed is reverted through the pipeline, and compiled once more. For every client proxy,
//! reading where its calls to `frontend` go while every endpoint is healthy (route weight
//! above 0, Envoy priority 0, locality weight above 0):
//!
//! - applied: no client reaches the degraded region; every route it has for the host that
//!   reached an endpoint still does; a client that never reached the degraded region keeps
//!   exactly the regions it reached; a region it newly reaches is one the function was told
//!   is healthy;
//! - refused (failed or skipped): no stored object changed and Istio compiles the same;
//! - reverting every changed object gives back the compiled configuration byte for byte,
//!   and the objects' specs.
//!
//! A violation is shrunk to a minimal mesh (one per class of invariant, for at most
//! `GENERATED_SHRINK_SECONDS`, default 240, each) and printed as YAML with its seed;
//! `GENERATED_REPORT=<file>` also writes them there as Markdown.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use mesh_remediation::remediation::RegionFailover;
use mesh_remediation::remediation::region_failover::FailoverSettings;
use remediation_testkit::gen_failover::run::Harness;
use remediation_testkit::gen_failover::{
    FailoverMesh, GATEWAY_PORT, HealthMode, PORT, SERVICE, Violation,
};
use remediation_testkit::generated::cycle::{self, Cycle, Function};
use remediation_testkit::generated::suite::{self, Seeds, fail_on_violations};
use remediation_testkit::generated::{Findings, ShrinkLimits, outcome_context};
use remediation_testkit::istio_oracle::{Client, Compiled, Route};
use serde_json::{Value, json};

/// The first seed when `GENERATED_SEED` is not set.
const DEFAULT_SEED: u64 = 20_261_201;
/// Meshes when `GENERATED_MESHES` is not set.
const DEFAULT_MESHES: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn region_failover_keeps_its_promises_on_generated_meshes() {
    let seeds = Seeds::from_env("region-failover", DEFAULT_SEED, DEFAULT_MESHES);
    let harness = Harness::connect(suite::kubeconfig()).await;
    let meshes = seeds.meshes(FailoverMesh::generate);
    let mut tally = Tally::default();
    let found = suite::run_in_groups(&meshes, "remediated", async |group| {
        run_meshes(&harness, group, Some(&mut tally)).await
    })
    .await;
    println!("  {tally}");
    let limits = suite::shrink_limits(ShrinkLimits {
        max_time: Duration::from_secs(240),
        ..ShrinkLimits::default()
    });
    fail_on_violations("region-failover", seeds, meshes, found, limits, async |c| {
        run_meshes(&harness, c, None).await
    })
    .await;
}

/// What the meshes of a run exercised, to tell a vacuous run from a real one.
#[derive(Default)]
struct Tally {
    outcomes: BTreeMap<String, usize>,
    changed: BTreeMap<&'static str, usize>,
    reasons: BTreeMap<String, usize>,
    reached_degraded_before: usize,
    gateways: usize,
    invalid: usize,
    unreachable: usize,
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "outcomes: {:?}", self.outcomes)?;
        writeln!(f, "  objects changed by kind: {:?}", self.changed)?;
        writeln!(
            f,
            "  meshes where a client reached the degraded region before: {}; with a gateway: {}; \
             invalid: {}; with a client reaching no endpoint before: {}",
            self.reached_degraded_before, self.gateways, self.invalid, self.unreachable
        )?;
        write!(f, "  refusals by reason: {:?}", self.reasons)
    }
}

/// The gist of a refusal, for grouping: its first target's reason without the target, the
/// outcome word and the mesh's names; its first words.
fn gist(mesh: &FailoverMesh, reason: &str) -> String {
    let reason = reason.replace(&mesh.prefix, "{P}");
    let mut why = reason.as_str();
    loop {
        let trimmed = why.trim_start();
        let next = ["skipped ", "failed ", "held: ", "cannot plan: "]
            .iter()
            .find_map(|p| trimmed.strip_prefix(p))
            .or_else(|| {
                let (target, rest) = trimmed.split_once(": ")?;
                let kinds = ["DestinationRule ", "VirtualService "];
                kinds.iter().any(|k| target.starts_with(k)).then_some(rest)
            });
        match next {
            Some(rest) => why = rest,
            None => break,
        }
    }
    why.split([':', '(', ';', ','])
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .take(9)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs every mesh through the whole cycle and returns each one's violations. With a
/// `tally`, the phases' times are printed and what was exercised is counted.
async fn run_meshes(
    h: &Harness,
    meshes: Vec<FailoverMesh>,
    tally: Option<&mut Tally>,
) -> Vec<Vec<Violation>> {
    let cycle = Cycle::run(h, &meshes, &Failover(h), tally.is_some()).await;
    if let Some(tally) = tally {
        tally.add(&meshes, &cycle);
    }
    cycle.violations(&meshes, check)
}

impl Tally {
    fn add(&mut self, meshes: &[FailoverMesh], cycle: &Cycle) {
        for (i, mesh) in meshes.iter().enumerate() {
            let Some(t) = cycle.trial(i, mesh) else {
                self.invalid += 1;
                continue;
            };
            self.unreachable += usize::from(unreachable_service(mesh, t.before).is_some());
            *self
                .outcomes
                .entry(t.outcome.outcome.as_str().to_owned())
                .or_default() += 1;
            for object in t.changed {
                *self
                    .changed
                    .entry(if object["kind"] == "VirtualService" {
                        "VirtualService"
                    } else {
                        "DestinationRule"
                    })
                    .or_default() += 1;
            }
            if let Some(reason) = &t.outcome.reason {
                *self.reasons.entry(gist(mesh, reason)).or_default() += 1;
            }
            let reached = mesh
                .client_proxies()
                .iter()
                .any(|c| regions(mesh, t.before, c).contains(&mesh.degraded));
            self.reached_degraded_before += usize::from(reached);
            self.gateways += usize::from(mesh.gateway.is_some());
        }
    }
}

/// region-failover, told the regions' health as each mesh says.
struct Failover<'a>(&'a Harness);

impl Function<FailoverMesh> for Failover<'_> {
    const NAME: &'static str = "region-failover";
    const REUSES_UNCHANGED_COMPILES: bool = true;
    type Remediation = RegionFailover;

    /// With the mesh's `REGION_HEALTH_URLS`, if it has them.
    fn remediation(&self, mesh: &FailoverMesh) -> RegionFailover {
        let urls = self.0.health_urls(mesh);
        let settings = FailoverSettings::from_lookup(|name| match name {
            "REGION_HEALTH_URLS" => urls.clone(),
            _ => None,
        })
        .expect("failover settings");
        RegionFailover::new(settings)
    }

    /// Its namespace, `frontend` and the degraded region.
    fn alert_labels(&self, mesh: &FailoverMesh) -> Value {
        json!({"namespace": mesh.alert_ns(), "service": SERVICE, "region": mesh.degraded})
    }
}

/// A sidecar that reaches no endpoint of `frontend` at all (a route to a subset no rule it
/// takes defines): counted, since the invariants say little about such a client.
fn unreachable_service(mesh: &FailoverMesh, compiled: &Compiled) -> Option<String> {
    mesh.client_proxies()
        .iter()
        .filter(|c| c.gateway_labels.is_none())
        .find_map(|c| {
            regions(mesh, compiled, c)
                .is_empty()
                .then(|| format!("client {} reaches no endpoint of {}", c.name, mesh.fqdn()))
        })
}

/// The routes carrying `client`'s calls to `frontend`: a sidecar's for the Service's host
/// and port, the gateway's for the authority it serves.
fn routes<'a>(mesh: &FailoverMesh, compiled: &'a Compiled, client: &Client) -> Vec<&'a Route> {
    let proxy = compiled.proxy(client.name);
    if client.gateway_labels.is_some() {
        proxy.gateway_routes(&mesh.authority(), GATEWAY_PORT)
    } else {
        proxy.routes_to(&mesh.fqdn(), PORT)
    }
}

/// The regions `routes` reach while every endpoint is healthy.
fn regions_through(compiled: &Compiled, client: &Client, routes: &[&Route]) -> BTreeSet<String> {
    let clusters: BTreeSet<String> = routes
        .iter()
        .flat_map(|r| r.clusters.iter())
        .filter(|c| c.weight > 0)
        .map(|c| c.name.clone())
        .collect();
    // A route to a cluster the proxy lacks (a subset no rule it takes defines) reaches
    // nothing: Envoy answers 503.
    let proxy = compiled.proxy(client.name);
    let known: BTreeSet<String> = clusters
        .into_iter()
        .filter(|c| proxy.clusters.contains_key(c))
        .collect();
    proxy
        .endpoints_of(&known)
        .into_iter()
        .map(|(_, region)| region)
        .collect()
}

/// The regions `client`'s calls to `frontend` reach.
fn regions(mesh: &FailoverMesh, compiled: &Compiled, client: &Client) -> BTreeSet<String> {
    regions_through(compiled, client, &routes(mesh, compiled, client))
}

/// A route's identity across compilations: its virtual host's domains and its match, with
/// its place among routes alike.
fn route_keys<'a>(routes: &[&'a Route]) -> Vec<(String, &'a Route)> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    routes
        .iter()
        .map(|r| {
            let base = format!(
                "{} {:?} {}",
                r.route_config,
                r.domains.first(),
                r.route_match.clone().unwrap_or(Value::Null)
            );
            let n = seen.entry(base.clone()).or_default();
            *n += 1;
            (format!("{base} #{n}"), *r)
        })
        .collect()
}

/// Everything known about one mesh's run.
type Trial<'a> = cycle::Trial<'a, FailoverMesh>;

fn check(t: &Trial) -> Vec<Violation> {
    t.violations(&outcome_context(t.outcome), |after, applied, f| {
        if applied {
            drained(t, after, f);
        }
    })
}

/// Applied: for every client proxy, the degraded region gets none of its calls, no route
/// that reached an endpoint is left without one, a client that never reached the degraded
/// region keeps its regions, and a region newly reached is one said to be healthy.
fn drained(t: &Trial, after: &Compiled, f: &mut Findings) {
    let degraded = &t.mesh.degraded;
    for client in t.mesh.client_proxies() {
        let at = format!("{} ({}, {})", client.name, client.namespace, client.region);
        let was = regions(t.mesh, t.before, &client);
        let now = regions(t.mesh, after, &client);
        if now.contains(degraded) {
            // The gateway's routes are a VirtualService's of their own: a class apart.
            let class = if client.gateway_labels.is_some() {
                "degraded-region-still-reached-by-gateway"
            } else {
                "degraded-region-still-reached"
            };
            f.add(class, format!("{at}: reaches {now:?} (before {was:?})"));
        }
        if !was.contains(degraded) && now != was {
            f.add(
                "untouched-client-regions-changed",
                format!("{at}: never reached {degraded}, reached {was:?}, now {now:?}"),
            );
        }
        let unhealthy: Vec<&String> = now
            .difference(&was)
            .filter(|r| !t.mesh.healthy(r))
            .collect();
        if !unhealthy.is_empty() && t.mesh.health != HealthMode::Unconfigured {
            f.add(
                "drained-to-unhealthy-region",
                format!("{at}: newly reaches {unhealthy:?} ({was:?} -> {now:?})"),
            );
        }
        let before_routes = route_keys(&routes(t.mesh, t.before, &client));
        for (route_key, route) in route_keys(&routes(t.mesh, after, &client)) {
            let reached_before = before_routes
                .iter()
                .find(|(k, _)| *k == route_key)
                .is_none_or(|(_, r)| !regions_through(t.before, &client, &[*r]).is_empty());
            if reached_before && regions_through(after, &client, &[route]).is_empty() {
                f.add(
                    "route-left-without-endpoints",
                    format!("{at}: route {route_key} reached an endpoint and reaches none now"),
                );
            }
        }
    }
}
