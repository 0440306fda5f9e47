//! Rollback meshes on a real API server: created in order, read back as stored, compiled in
//! batches with the Istio oracle, and shrunk. The connection ([`Harness`]), the prefixes
//! and the shrinking limits are `mesh_gen`'s; what differs is the kinds stored (Services,
//! DestinationRules and VirtualServices) and the mesh type.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use kube::api::{Api, ApiResource, DynamicObject, ListParams, PostParams};
use serde_json::{Value, json};

use super::RollbackMesh;
use crate::istio_oracle::{CompileJob, Compiled, compile_many};
use crate::mesh::Kind;
use crate::mesh_gen::Violation;
use crate::mesh_gen::run::{Harness, ShrinkLimits, fresh_prefix, key};

/// The kinds of a mesh the API server stores, in the order they are read back.
const STORED: [&str; 3] = ["Service", "DestinationRule", "VirtualService"];

fn resource(kind: &str) -> ApiResource {
    match kind {
        "Service" => ApiResource::erase::<Service>(&()),
        "DestinationRule" => Kind::DestinationRule.resource(),
        "VirtualService" => Kind::VirtualService.resource(),
        other => panic!("no resource for {other}"),
    }
}

/// Creates the mesh: its namespaces, the budget ConfigMap in the alert's namespace, then
/// its objects one by one in order. A refusal (4xx) is an error; 5xx is waited out.
pub async fn deploy(h: &Harness, mesh: &RollbackMesh) -> Result<(), String> {
    let client = h.admin().clone();
    let post = PostParams::default();
    for name in mesh.namespace_names() {
        let ns: Namespace = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"istio-injection": "enabled"}}}))
        .expect("namespace");
        let api = Api::<Namespace>::all(client.clone());
        create(&format!("namespace {name}"), || api.create(&post, &ns)).await?;
    }
    let budget: ConfigMap = serde_json::from_value(json!({"metadata": {
        "name": mesh_remediation::budget::BUDGET_CONFIGMAP, "namespace": mesh.alert_ns()}}))
    .expect("budget configmap");
    let api = Api::<ConfigMap>::namespaced(client.clone(), &mesh.alert_ns());
    create("the budget ConfigMap", || api.create(&post, &budget)).await?;
    for object in mesh.api_objects() {
        let kind = object["kind"].as_str().unwrap_or_default().to_owned();
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
    // checkout's ready pods, as error-rollback reads them (the stable destination must have
    // one); the oracle compiles its own copies.
    crate::endpoints::region_nodes(&client).await;
    for pod in mesh.world_objects().iter().filter(|o| o["kind"] == "Pod") {
        crate::endpoints::store_pod(&client, pod).await?;
    }
    Ok(())
}

/// Runs one create call; retries while the server fails (5xx), for up to two minutes.
async fn create<T, F: Future<Output = kube::Result<T>>>(
    what: &str,
    call: impl Fn() -> F,
) -> Result<(), String> {
    let started = Instant::now();
    loop {
        match call().await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.code < 500 => {
                return Err(format!("create {what}: {} {}", status.code, status.message));
            }
            Err(_) if started.elapsed() < Duration::from_secs(120) => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(err) => panic!("the API server keeps failing to create {what}: {err}"),
        }
    }
}

/// Deletes the meshes' namespaces (unless `GENERATED_KEEP` is set).
pub async fn remove(h: &Harness, meshes: &[RollbackMesh]) {
    if std::env::var_os("GENERATED_KEEP").is_some() {
        return;
    }
    let api = Api::<Namespace>::all(h.admin().clone());
    for name in meshes.iter().flat_map(RollbackMesh::namespace_names) {
        // Gone already, or never created: either way not there.
        let _ = api.delete(&name, &Default::default()).await;
    }
}

/// For each mesh, its objects as the API server stores them (without `managedFields`), in
/// a fixed order. Three cluster-wide lists, whatever the number of meshes.
pub async fn stored(h: &Harness, meshes: &[RollbackMesh]) -> Vec<Vec<Value>> {
    let mut owner: BTreeMap<String, usize> = BTreeMap::new();
    for (i, mesh) in meshes.iter().enumerate() {
        for namespace in mesh.namespace_names() {
            owner.insert(namespace, i);
        }
    }
    let mut out: Vec<Vec<Value>> = vec![Vec::new(); meshes.len()];
    for kind in STORED {
        let resource = resource(kind);
        let list = Api::<DynamicObject>::all_with(h.admin().clone(), &resource)
            .list(&ListParams::default())
            .await
            .unwrap_or_else(|err| panic!("list {kind}: {err}"));
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
            let kind = STORED.iter().position(|k| o["kind"] == *k);
            (kind, key(o))
        });
    }
    out
}

/// Compiles every mesh with its `stored` objects for its proxies, with its own root
/// namespace, in oracle processes on a blocking thread.
pub async fn compile_all(
    meshes: &[RollbackMesh],
    stored: &[Vec<Value>],
) -> Vec<Result<Compiled, String>> {
    let jobs: Vec<CompileJob> = meshes
        .iter()
        .zip(stored)
        .map(|(mesh, objects)| {
            (
                mesh.world_with(objects),
                mesh.proxies(),
                mesh.root_namespace(),
            )
        })
        .collect();
    tokio::task::spawn_blocking(move || compile_many(&jobs))
        .await
        .expect("the oracle thread")
}

/// The result of shrinking.
#[derive(Debug, Clone)]
pub struct Shrunk {
    /// The smallest mesh found that still breaks the same invariant.
    pub mesh: RollbackMesh,
    /// Its violation.
    pub violation: Violation,
    /// Candidates run.
    pub tried: usize,
    /// Accepted reductions.
    pub steps: usize,
}

/// Reduces `mesh` (which broke `violation`): runs its [`RollbackMesh::shrink`] candidates in
/// chunks on fresh prefixes through `run`, moves to the smallest candidate of the first
/// chunk that breaks the same class of invariant, and repeats until none does or the limits
/// are reached.
pub async fn shrink(
    mesh: &RollbackMesh,
    violation: &Violation,
    limits: ShrinkLimits,
    run: impl AsyncFn(Vec<RollbackMesh>) -> Vec<Vec<Violation>>,
) -> Shrunk {
    let started = Instant::now();
    let mut best = Shrunk {
        mesh: mesh.clone(),
        violation: violation.clone(),
        tried: 0,
        steps: 0,
    };
    'reduce: loop {
        let candidates = best.mesh.shrink();
        for chunk in candidates.chunks(limits.chunk.max(1)) {
            if best.tried >= limits.max_candidates || started.elapsed() > limits.max_time {
                break 'reduce;
            }
            let fresh: Vec<RollbackMesh> = chunk
                .iter()
                .map(|c| c.with_prefix(&fresh_prefix(c.seed)))
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
                .min_by_key(|(m, _)| m.size());
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
