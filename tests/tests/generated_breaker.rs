//! db-circuit-break on generated meshes, judged by Istio's config compiler.
//!
//! For seeds `GENERATED_SEED..GENERATED_SEED + GENERATED_MESHES` (defaults below), each
//! generated mesh ([`GeneratedMesh`]) is created on the real API server in namespaces of its
//! own, compiled for every client proxy, the function runs on its alert (with the mesh's
//! root namespace as `ISTIO_ROOT_NAMESPACE`), everything is read back and compiled again,
//! every object it changed is reverted through the pipeline, and compiled once more. The
//! breaker has its default settings; a quarter of the meshes (by seed) get other limits, and
//! a quarter `CB_LOCALITY_LB=prioritize`. For every client proxy:
//!
//! - applied: every Envoy cluster of the database host on its port carries the breaker:
//!   its connection and pending-request limits and connect timeout are the lower of the
//!   breaker's and what they were, and 5xx ejection is on (after 1 to the breaker's
//!   consecutive errors);
//! - refused (failed or skipped): no stored object changed and Istio compiles the same;
//! - nothing outside the breaker fields changed: routes, every other cluster, and the
//!   database's clusters without their breaker and locality fields; the endpoints each
//!   client uses while all are healthy stay as they were when the outcome says "as before",
//!   and the outcome says otherwise when it does not;
//! - reverting every changed object gives back the exact compiled configuration.
//!
//! A violation is shrunk to a minimal mesh (one per class of invariant, at most 400
//! candidates and `GENERATED_SHRINK_SECONDS`, default 300; `GENERATED_SHRINK=0` skips
//! shrinking) and printed as YAML with its seed (names under the prefix `mesh`);
//! `GENERATED_REPORT=<file>` also writes the report there as Markdown.

#[path = "generated_breaker/invariants.rs"]
mod invariants;

use std::collections::BTreeMap;

use mesh_remediation::remediation::DbCircuitBreak;
use mesh_remediation::remediation::db_circuit_break::CircuitBreaker;
use remediation_testkit::generated::cycle::{Cycle, Function};
use remediation_testkit::generated::suite::{self, Seeds, fail_on_violations};
use remediation_testkit::generated::{Harness, ShrinkLimits};
use remediation_testkit::istio_oracle::Compiled;
use remediation_testkit::mesh_gen::rng::Rng;
use remediation_testkit::mesh_gen::{DB_PORT, GeneratedMesh, Violation};
use serde_json::{Value, json};

use invariants::check;

/// The first seed when `GENERATED_SEED` is not set.
const DEFAULT_SEED: u64 = 20_261_125;
/// Meshes when `GENERATED_MESHES` is not set.
const DEFAULT_MESHES: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn db_circuit_break_keeps_its_promises_on_generated_meshes() {
    let seeds = Seeds::from_env("db-circuit-break", DEFAULT_SEED, DEFAULT_MESHES);
    let harness = Harness::connect(suite::kubeconfig(), "gen-home").await;
    let meshes = seeds.meshes(GeneratedMesh::generate);
    let found = suite::run_in_groups(&meshes, "remediated", async |group| {
        run_meshes(&harness, group, true).await
    })
    .await;
    let limits = suite::shrink_limits(ShrinkLimits::default());
    fail_on_violations(
        "db-circuit-break",
        seeds,
        meshes,
        found,
        limits,
        async |c| run_meshes(&harness, c, false).await,
    )
    .await;
}

/// Runs every mesh through the whole cycle and returns each one's violations.
async fn run_meshes(h: &Harness, meshes: Vec<GeneratedMesh>, verbose: bool) -> Vec<Vec<Violation>> {
    let cycle = Cycle::run(h, &meshes, &Breaker, verbose).await;
    if verbose {
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        for outcome in cycle.outcomes.iter().flatten() {
            *kinds.entry(outcome.outcome.as_str()).or_default() += 1;
        }
        println!("  outcomes: {kinds:?}");
    }
    cycle.violations(&meshes, check)
}

/// db-circuit-break, with the settings each mesh's seed decides.
struct Breaker;

impl Function<GeneratedMesh> for Breaker {
    const NAME: &'static str = "db-circuit-break";
    type Remediation = DbCircuitBreak;

    fn remediation(&self, mesh: &GeneratedMesh) -> DbCircuitBreak {
        DbCircuitBreak::new(settings(mesh))
    }

    /// Its namespace, calling service and database host.
    fn alert_labels(&self, mesh: &GeneratedMesh) -> Value {
        json!({"namespace": mesh.alert_ns(), "db_host": mesh.db_host_value(),
               "service": mesh.calling_service})
    }

    fn unusable(&self, mesh: &GeneratedMesh, before: &Compiled) -> Option<String> {
        unreachable_database(mesh, before)
    }
}

/// A client proxy that sees no cluster of the database: the mesh does not test anything.
fn unreachable_database(mesh: &GeneratedMesh, compiled: &Compiled) -> Option<String> {
    let host = mesh.db_fqdn();
    mesh.client_proxies().iter().find_map(|c| {
        let clusters = compiled.proxy(c.name).clusters_of(&host, DB_PORT);
        clusters
            .is_empty()
            .then(|| format!("client {} sees no cluster of {host}", c.name))
    })
}

/// The breaker's settings for a mesh, decided by its seed: the defaults (max 100
/// connections, 64 pending requests, 2 s connect timeout, 5 consecutive 5xx), other limits
/// for a quarter of the meshes, and `CB_LOCALITY_LB=prioritize` for another quarter.
fn settings(mesh: &GeneratedMesh) -> CircuitBreaker {
    CircuitBreaker::from_lookup(|k| setting_vars(mesh).remove(k)).expect("valid settings")
}

/// The variables [`settings`] reads beyond the defaults.
fn setting_vars(mesh: &GeneratedMesh) -> BTreeMap<&'static str, String> {
    let mut rng = Rng::new(mesh.seed ^ 0x10CA_117E);
    let mut vars = BTreeMap::new();
    if rng.chance(25) {
        vars.insert("CB_LOCALITY_LB", "prioritize".to_owned());
    }
    if rng.chance(25) {
        let max = *rng.pick(&["10", "64", "1000"]);
        let pending = *rng.pick(&["1", "64", "200"]);
        let timeout = *rng.pick(&["500ms", "1500ms", "5s"]);
        let errors = *rng.pick(&["1", "3", "10"]);
        vars.insert("CB_MAX_CONNECTIONS", max.to_owned());
        vars.insert("CB_MAX_PENDING_REQUESTS", pending.to_owned());
        vars.insert("CB_CONNECT_TIMEOUT", timeout.to_owned());
        vars.insert("CB_CONSECUTIVE_ERRORS", errors.to_owned());
    }
    vars
}
