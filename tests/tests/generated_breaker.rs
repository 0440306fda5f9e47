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
use std::time::Instant;

use futures::stream::{self, StreamExt};
use mesh_remediation::pipeline::Invocation;
use mesh_remediation::remediation::DbCircuitBreak;
use mesh_remediation::remediation::db_circuit_break::CircuitBreaker;
use mesh_remediation::report::Outcome;
use remediation_testkit::cluster::pipeline_with;
use remediation_testkit::events;
use remediation_testkit::generated::suite::{self, Clock, GROUP, Seeds, fail_on_violations, fnv};
use remediation_testkit::generated::{
    Harness, Reverted, ShrinkLimits, changed_objects, compile_all, delivered, key,
};
use remediation_testkit::istio_oracle::Compiled;
use remediation_testkit::mesh_gen::rng::Rng;
use remediation_testkit::mesh_gen::{DB_PORT, GeneratedMesh, Violation};
use serde_json::{Value, json};

use invariants::{Trial, check};

/// The first seed when `GENERATED_SEED` is not set.
const DEFAULT_SEED: u64 = 20_261_125;
/// Meshes when `GENERATED_MESHES` is not set.
const DEFAULT_MESHES: u64 = 100;
/// Meshes set up, invoked and reverted at once.
const CONCURRENCY: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn db_circuit_break_keeps_its_promises_on_generated_meshes() {
    let seeds = Seeds::from_env("db-circuit-break", DEFAULT_SEED, DEFAULT_MESHES);
    let harness = Harness::connect(suite::kubeconfig(), "gen-home").await;
    let started = Instant::now();
    let meshes = seeds.meshes(GeneratedMesh::generate);
    let mut found = Vec::new();
    for group in meshes.chunks(GROUP) {
        found.extend(run_meshes(&harness, group.to_vec(), true).await);
    }
    println!(
        "{} meshes set up, compiled, remediated, reverted and checked in {:.1?}",
        seeds.count,
        started.elapsed()
    );
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

/// Runs every mesh through the whole cycle and returns each one's violations. Meshes are
/// set up, invoked and reverted `CONCURRENCY` at a time; each compile phase compiles all of
/// them in a few oracle processes (`compile_many`).
async fn run_meshes(h: &Harness, meshes: Vec<GeneratedMesh>, verbose: bool) -> Vec<Vec<Violation>> {
    let mut clock = Clock::new(verbose);
    let mut found: Vec<Vec<Violation>> = vec![Vec::new(); meshes.len()];
    let deployed: Vec<Result<(), String>> = stream::iter(&meshes)
        .map(|m| h.deploy(m))
        .buffered(CONCURRENCY)
        .collect()
        .await;
    clock.lap("created on the API server");
    let before_objects = h.stored(&meshes).await;
    let before = compile_all(&meshes, &before_objects).await;
    clock.lap("read back and compiled (before)");
    let mut live = vec![false; meshes.len()];
    for (i, mesh) in meshes.iter().enumerate() {
        match (&deployed[i], &before[i]) {
            (Err(why), _) => found[i].push(Violation::new("invalid-mesh", why.clone())),
            (_, Err(why)) => found[i].push(Violation::new("invalid-mesh", why.clone())),
            (Ok(()), Ok(compiled)) => match unreachable_database(mesh, compiled) {
                Some(why) => found[i].push(Violation::new("invalid-mesh", why)),
                None => live[i] = true,
            },
        }
    }
    let outcomes: Vec<Option<Outcome>> = stream::iter(meshes.iter().zip(&live))
        .map(|(mesh, live)| async move {
            match live {
                true => Some(invoke(h, mesh).await),
                false => None,
            }
        })
        .buffered(CONCURRENCY)
        .collect()
        .await;
    clock.lap("db-circuit-break invoked");
    if verbose {
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        for outcome in outcomes.iter().flatten() {
            *kinds.entry(outcome.outcome.as_str()).or_default() += 1;
        }
        println!("  outcomes: {kinds:?}");
    }
    let after_objects = h.stored(&meshes).await;
    let after = compile_all(&meshes, &after_objects).await;
    clock.lap("read back and compiled (after)");
    let changed: Vec<Vec<Value>> = before_objects
        .iter()
        .zip(&after_objects)
        .map(|(b, a)| changed_objects(b, a))
        .collect();
    let reverts: Vec<Vec<(String, Outcome)>> = stream::iter(meshes.iter().zip(&changed))
        .map(|(mesh, objects)| async move {
            let mut out = Vec::new();
            for object in objects {
                out.push((key(object), revert(h, mesh, object).await));
            }
            out
        })
        .buffered(CONCURRENCY)
        .collect()
        .await;
    clock.lap("reverted");
    let reverted_objects = h.stored(&meshes).await;
    let reverted = compile_all(&meshes, &reverted_objects).await;
    clock.lap("read back and compiled (reverted)");
    for (i, mesh) in meshes.iter().enumerate() {
        let (Some(outcome), Ok(before)) = (&outcomes[i], &before[i]) else {
            continue;
        };
        let trial = Trial {
            mesh,
            outcome,
            before,
            after: after[i].as_ref(),
            changed: &changed[i],
            undo: Reverted {
                before,
                reverted: reverted[i].as_ref(),
                before_objects: &before_objects[i],
                reverted_objects: &reverted_objects[i],
                reverts: &reverts[i],
            },
        };
        found[i].extend(check(&trial));
    }
    h.remove(&meshes).await;
    found
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

/// The alert of a mesh: its namespace, calling service and database host.
fn alert(mesh: &GeneratedMesh) -> Value {
    let mut event = events::fresh("db-circuit-break-firing.json", &mesh.alert_ns());
    let mut message = events::message(&event);
    let labels = json!({"namespace": mesh.alert_ns(), "db_host": mesh.db_host_value(),
                        "service": mesh.calling_service});
    for (k, v) in labels.as_object().into_iter().flatten() {
        message["commonLabels"][k] = v.clone();
        for alert in message["alerts"].as_array_mut().expect("alerts") {
            alert["labels"][k] = v.clone();
        }
    }
    message["alerts"][0]["fingerprint"] = json!(format!("{:016x}", fnv(&mesh.prefix)));
    events::set_message(&mut event, &message);
    event
}

/// The function's settings for a mesh: its budgets in the alert's namespace, its root.
fn vars(mesh: &GeneratedMesh) -> [(String, String); 2] {
    [
        ("BUDGET_NAMESPACE".into(), mesh.alert_ns()),
        ("ISTIO_ROOT_NAMESPACE".into(), mesh.root_namespace()),
    ]
}

/// Runs `event` through the pipeline with the function's own identity; its one outcome.
async fn handle(h: &Harness, mesh: &GeneratedMesh, event: &Value, id: &str) -> Outcome {
    let vars = vars(mesh);
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let pipeline = pipeline_with(
        h.home.function_client("db-circuit-break"),
        DbCircuitBreak::new(settings(mesh)),
        &vars,
    );
    let invocation = Invocation::new(id, None, None);
    delivered(|| pipeline.handle(event, &invocation)).await
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

async fn invoke(h: &Harness, mesh: &GeneratedMesh) -> Outcome {
    handle(h, mesh, &alert(mesh), &format!("alert-{}", mesh.prefix)).await
}

/// Sends the revert request for one changed object, as a person would.
async fn revert(h: &Harness, mesh: &GeneratedMesh, object: &Value) -> Outcome {
    let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default();
    let mut event = events::fresh("db-circuit-break-revert.json", namespace);
    event["revert"]["namespace"] = json!(namespace);
    event["revert"]["kind"] = object["kind"].clone();
    event["revert"]["name"] = object["metadata"]["name"].clone();
    handle(
        h,
        mesh,
        &event,
        &format!("revert-{}-{}", mesh.prefix, key(object)),
    )
    .await
}
