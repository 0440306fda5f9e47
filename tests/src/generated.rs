//! What the generated-mesh suites share: a mesh on a real API server (each mesh's
//! namespaces and objects created in order, so creation timestamps and names order its
//! rules as Istio does; read back as the server stores them; deleted), compiled in batches
//! by Istio's compiler, and the shrinking loop that reduces a failing mesh to a minimal
//! one. Each generator ([`crate::mesh_gen`], [`crate::gen_rollback`],
//! [`crate::gen_failover`]) says what its meshes are through [`Generated`]; what is checked
//! is the caller's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use kube::api::{Api, ApiResource, DynamicObject, ListParams, PostParams};
use mesh_remediation::report::{InvocationReport, Outcome, OutcomeKind};
use serde_json::{Value, json};

use crate::TestCluster;
use crate::istio_oracle::{CompileJob, Compiled, compile_many};
use crate::mesh::Kind;
use crate::mesh_gen::Violation;
use crate::transient::{create, idempotent};

pub mod cycle;
mod findings;
pub mod prune;
pub mod suite;
mod templates;

pub use findings::{
    Findings, Reverted, applied_or_refused_cleanly, changed_objects, check_reverts, compiled_after,
    first_difference, outcome_context,
};
pub use templates::{Generated, PREFIX, find_object, render, root_template};

/// The real API server the meshes live on.
pub struct Harness {
    /// A cluster of its own for the function identities (and a namespace nobody uses).
    pub home: TestCluster,
}

impl Harness {
    /// Connects with the admin kubeconfig (function kubeconfigs beside it); `name` prefixes
    /// the home namespace.
    pub async fn connect(kubeconfig: PathBuf, name: &str) -> Harness {
        let home = TestCluster::connect_in(crate::cluster::unique_name(name), kubeconfig).await;
        crate::endpoints::region_nodes(&home.client).await;
        Harness { home }
    }

    /// The admin client.
    pub fn admin(&self) -> &kube::Client {
        &self.home.client
    }

    /// Creates the mesh: its namespaces (the alert's with its own action budgets), then its
    /// objects one by one in order. An object the server refuses as invalid (4xx) is an
    /// error; the server failing (5xx) is waited out for a while.
    pub async fn deploy<M: Generated>(&self, mesh: &M) -> Result<(), String> {
        let client = self.admin().clone();
        let post = PostParams::default();
        for name in mesh.namespace_names() {
            let ns: Namespace = serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {"istio-injection": "enabled"}}}))
            .expect("namespace");
            let api = Api::<Namespace>::all(client.clone());
            create(&format!("namespace {name}"), || api.create(&post, &ns)).await?;
        }
        let budget: ConfigMap = serde_json::from_value(json!({"metadata": {
            "name": mesh_remediation::guard::budget::BUDGET_CONFIGMAP,
            "namespace": mesh.alert_namespace()}}))
        .expect("budget configmap");
        let api = Api::<ConfigMap>::namespaced(client.clone(), &mesh.alert_namespace());
        create("the budget ConfigMap", || api.create(&post, &budget)).await?;
        for mut object in mesh.api_objects().into_iter().chain(mesh.also_stored()) {
            let kind = object["kind"].as_str().unwrap_or_default().to_owned();
            if kind == "Pod" {
                crate::endpoints::store_pod(&client, &object).await?;
                continue;
            }
            if kind == "Service"
                && let Some(spec) = object["spec"].as_object_mut()
            {
                spec.remove("clusterIP");
            }
            let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default();
            let name = object["metadata"]["name"].as_str().unwrap_or_default();
            let dynamic: DynamicObject =
                serde_json::from_value(object.clone()).map_err(|err| format!("{kind}: {err}"))?;
            let api =
                Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &resource(&kind));
            create(&format!("{kind} {namespace}/{name}"), || {
                api.create(&post, &dynamic)
            })
            .await?;
        }
        Ok(())
    }

    /// Deletes the meshes' namespaces (and so everything in them), without waiting for the
    /// namespace controller; unless `GENERATED_KEEP` is set, to look at them afterwards.
    pub async fn remove<M: Generated>(&self, meshes: &[M]) {
        if std::env::var_os("GENERATED_KEEP").is_some() {
            return;
        }
        let api = Api::<Namespace>::all(self.admin().clone());
        for name in meshes.iter().flat_map(M::namespace_names) {
            // Gone already, or never created: either way not there.
            let _ = api.delete(&name, &Default::default()).await;
        }
    }

    /// For each mesh, the objects of its namespaces as the API server stores them (the
    /// kinds of [`Generated::STORED`], without `managedFields`), in a fixed order: one
    /// cluster-wide list per kind, whatever the number of meshes.
    pub async fn stored<M: Generated>(&self, meshes: &[M]) -> Vec<Vec<Value>> {
        let mut owner: BTreeMap<String, usize> = BTreeMap::new();
        for (i, mesh) in meshes.iter().enumerate() {
            for namespace in mesh.namespace_names() {
                owner.insert(namespace, i);
            }
        }
        let mut out: Vec<Vec<Value>> = vec![Vec::new(); meshes.len()];
        for kind in M::STORED {
            let resource = resource(kind);
            let api = Api::<DynamicObject>::all_with(self.admin().clone(), &resource);
            let params = ListParams::default();
            let list = idempotent(&format!("list {kind}"), || api.list(&params)).await;
            for item in list.items {
                let namespace = item.metadata.namespace.clone().unwrap_or_default();
                let Some(&i) = owner.get(&namespace) else {
                    continue;
                };
                let mut value = serde_json::to_value(item).expect("json");
                value["apiVersion"] = json!(resource.api_version);
                value["kind"] = json!(kind);
                if let Some(metadata) = value["metadata"].as_object_mut() {
                    metadata.remove("managedFields");
                }
                out[i].push(value);
            }
        }
        for objects in &mut out {
            objects.sort_by_key(|o| {
                let kind = M::STORED.iter().position(|k| o["kind"] == *k);
                (kind, key(o))
            });
        }
        out
    }
}

/// The smaller meshes worth running when shrinking `mesh`, of those proposed: `valid` ones
/// other than `mesh`, one per identity (the objects, the world and what `rest` adds),
/// smallest first (as proposed where alike in size).
pub fn worth_trying<M: Generated + PartialEq>(
    mesh: &M,
    proposed: Vec<M>,
    valid: impl Fn(&M) -> bool,
    rest: impl Fn(&M) -> String,
) -> Vec<M> {
    let identity = |m: &M| {
        let (objects, world) = (m.object_templates(), m.world_templates());
        format!("{objects:?}{world:?}{}", rest(m))
    };
    let mut seen = BTreeSet::new();
    let mut out: Vec<M> = proposed
        .into_iter()
        .filter(|m| m != mesh && valid(m))
        .filter(|m| seen.insert(identity(m)))
        .collect();
    out.sort_by_key(M::weight);
    out
}

/// Asserts shrinking the meshes of seeds 0 to 39 proposes only smaller meshes that are
/// `valid`, always ends, and ends on a mesh `at_floor` calls minimal.
#[cfg(test)]
pub(crate) fn assert_shrinks_to_a_floor<M: Generated>(
    generate: impl Fn(u64) -> M,
    valid: impl Fn(&M) -> bool,
    at_floor: impl Fn(&M) -> bool,
) {
    for seed in 0..40 {
        let mut mesh = generate(seed);
        let mut steps = 0;
        loop {
            let candidates = mesh.smaller();
            for c in &candidates {
                assert!(c.weight() < mesh.weight(), "seed {seed}");
                assert!(valid(c));
            }
            let Some(first) = candidates.into_iter().next() else {
                break;
            };
            mesh = first;
            steps += 1;
            assert!(steps < 500, "seed {seed}: shrinking does not end");
        }
        assert!(at_floor(&mesh), "seed {seed}: {}", mesh.to_yaml());
    }
}

/// Delivers one request as Lambda does an asynchronous invocation: a retryable failure is
/// retried, twice, with the same request id (a retry recognises its own earlier change).
/// The suites judge the outcome Lambda's retries end with, so a connection the loaded test
/// control plane drops is absorbed as in production, not reported as a violation.
pub async fn delivered<F: Future<Output = InvocationReport>>(attempt: impl Fn() -> F) -> Outcome {
    let mut tries = 0;
    loop {
        let report = attempt().await;
        assert_eq!(report.outcomes.len(), 1, "{report:#?}");
        let outcome = report.outcomes[0].clone();
        tries += 1;
        if outcome.outcome != OutcomeKind::Failed || !outcome.retryable || tries == 3 {
            return outcome;
        }
        tokio::time::sleep(Duration::from_millis(200 * tries)).await;
    }
}

fn resource(kind: &str) -> ApiResource {
    match kind {
        "Service" => ApiResource::erase::<Service>(&()),
        "ServiceEntry" => Kind::ServiceEntry.resource(),
        "DestinationRule" => Kind::DestinationRule.resource(),
        "VirtualService" => Kind::VirtualService.resource(),
        other => panic!("no resource for {other}"),
    }
}

/// `namespace/name` of an object.
pub fn key(object: &Value) -> String {
    format!(
        "{}/{}",
        object["metadata"]["namespace"].as_str().unwrap_or_default(),
        object["metadata"]["name"].as_str().unwrap_or_default()
    )
}

/// Compiles every mesh with its `stored` objects, in oracle processes on a blocking
/// thread. Each answer is the compiled configuration or why Istio rejected the objects.
pub async fn compile_all<M: Generated>(
    meshes: &[M],
    stored: &[Vec<Value>],
) -> Vec<Result<Compiled, String>> {
    let jobs: Vec<CompileJob> = meshes
        .iter()
        .zip(stored)
        .map(|(mesh, objects)| mesh.compile_job(objects))
        .collect();
    tokio::task::spawn_blocking(move || compile_many(&jobs))
        .await
        .expect("the oracle thread")
}

/// A prefix no other mesh of this control plane has: the seed, the process and a counter.
pub fn fresh_prefix(seed: u64) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("g{seed}-{}x{n}", std::process::id() % 100_000)
}

/// How much effort shrinking one failing mesh may take.
#[derive(Debug, Clone, Copy)]
pub struct ShrinkLimits {
    /// Candidates run at most.
    pub max_candidates: usize,
    /// Candidates run together (one batch of the runner).
    pub chunk: usize,
    /// Wall time at most (the round under way finishes).
    pub max_time: Duration,
}

impl Default for ShrinkLimits {
    fn default() -> Self {
        ShrinkLimits {
            max_candidates: 400,
            chunk: 16,
            max_time: Duration::from_secs(300),
        }
    }
}

/// The result of shrinking.
#[derive(Debug, Clone)]
pub struct Shrunk<M> {
    /// The smallest mesh found that still breaks the same invariant.
    pub mesh: M,
    /// Its violation.
    pub violation: Violation,
    /// Candidates run.
    pub tried: usize,
    /// Accepted reductions.
    pub steps: usize,
}

/// Reduces `mesh` (which broke `violation`): runs its smaller candidates in chunks on
/// fresh prefixes through `run` (which answers each mesh's violations), moves to the
/// smallest candidate of the first chunk that breaks the same class of invariant, and
/// repeats until no candidate does or the limits are reached.
pub async fn shrink<M: Generated>(
    mesh: &M,
    violation: &Violation,
    limits: ShrinkLimits,
    run: impl AsyncFn(Vec<M>) -> Vec<Vec<Violation>>,
) -> Shrunk<M> {
    let started = Instant::now();
    let mut best = Shrunk {
        mesh: mesh.clone(),
        violation: violation.clone(),
        tried: 0,
        steps: 0,
    };
    'reduce: loop {
        let candidates = best.mesh.smaller();
        for chunk in candidates.chunks(limits.chunk.max(1)) {
            if best.tried >= limits.max_candidates || started.elapsed() > limits.max_time {
                break 'reduce;
            }
            let fresh: Vec<M> = chunk
                .iter()
                .map(|c| c.with_prefix(&fresh_prefix(c.seed())))
                .collect();
            best.tried += fresh.len();
            let results = run(fresh.clone()).await;
            let smallest = fresh
                .into_iter()
                .zip(results)
                .filter_map(|(m, found)| {
                    let same = found.into_iter().find(|v| v.class == best.violation.class);
                    same.map(|v| (m, v))
                })
                .min_by_key(|(m, _)| m.weight());
            if let Some((m, v)) = smallest {
                best.mesh = m;
                best.violation = v;
                best.steps += 1;
                continue 'reduce;
            }
        }
        break;
    }
    best
}
