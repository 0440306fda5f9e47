//! Generated failover meshes on a real API server: each mesh's namespaces and stored
//! objects (DestinationRules, VirtualServices) created in order, read back as the server
//! stores them, compiled in one Istio oracle run per phase; the regions' health endpoints;
//! and the shrinking loop. What is checked is the caller's. Services, pods and the Gateway
//! are the oracle's alone: the function reads none of them, and the test control plane's
//! Service IP range is small.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use kube::api::{Api, ApiResource, DynamicObject, ListParams, PostParams};
use serde_json::{Value, json};

use super::{FailoverMesh, Violation};
use crate::TestCluster;
use crate::istio_oracle::{CompileJob, Compiled, compile_many};
use crate::mesh::{HealthEndpoint, Kind};
pub use crate::mesh_gen::run::{ShrinkLimits, key};

/// The kinds a mesh stores on the API server, in the order they are read back.
const STORED: [Kind; 2] = [Kind::DestinationRule, Kind::VirtualService];

/// The real API server the meshes live on, and the regions' health endpoints.
pub struct Harness {
    /// A cluster of its own for the function identities (and a namespace nobody uses).
    pub home: TestCluster,
    ok: HealthEndpoint,
    failing: HealthEndpoint,
}

impl Harness {
    /// Connects with the admin kubeconfig (function kubeconfigs beside it) and starts two
    /// health endpoints, one answering 200 and one 503.
    pub async fn connect(kubeconfig: PathBuf) -> Harness {
        let home =
            TestCluster::connect_in(crate::cluster::unique_name("genfo-home"), kubeconfig).await;
        crate::endpoints::region_nodes(&home.client).await;
        Harness {
            home,
            ok: HealthEndpoint::start(200).await,
            failing: HealthEndpoint::start(503).await,
        }
    }

    /// The admin client.
    pub fn admin(&self) -> &kube::Client {
        &self.home.client
    }

    /// `REGION_HEALTH_URLS` for `mesh`, if it configures one.
    pub fn health_urls(&self, mesh: &FailoverMesh) -> Option<String> {
        mesh.health_urls(self.ok.url(), self.failing.url())
    }

    /// Creates the mesh: its namespaces (the alert's with its action budgets), then its
    /// stored objects one by one in order. An object the server refuses (4xx) is an error.
    pub async fn deploy(&self, mesh: &FailoverMesh) -> Result<(), String> {
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
            "name": mesh_remediation::budget::BUDGET_CONFIGMAP, "namespace": mesh.alert_ns()}}))
        .expect("budget configmap");
        let api = Api::<ConfigMap>::namespaced(client.clone(), &mesh.alert_ns());
        create("the budget ConfigMap", || api.create(&post, &budget)).await?;
        // Where frontend's endpoints run, as region-failover reads them: its Services and
        // ready Pods (the oracle compiles its own copies).
        for object in mesh.world_objects() {
            let name = object["metadata"]["name"].as_str().unwrap_or_default();
            let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default();
            match object["kind"].as_str() {
                Some("Pod") => crate::endpoints::store_pod(&client, &object).await?,
                Some("Service") => {
                    let mut service = object.clone();
                    if let Some(spec) = service["spec"].as_object_mut() {
                        spec.remove("clusterIP");
                    }
                    let service: Service = serde_json::from_value(service)
                        .map_err(|err| format!("Service {name}: {err}"))?;
                    let api = Api::<Service>::namespaced(client.clone(), namespace);
                    create(&format!("Service {namespace}/{name}"), || {
                        api.create(&post, &service)
                    })
                    .await?;
                }
                _ => {}
            }
        }
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
        Ok(())
    }

    /// Deletes the meshes' namespaces without waiting; unless `GENERATED_KEEP` is set.
    pub async fn remove(&self, meshes: &[FailoverMesh]) {
        if std::env::var_os("GENERATED_KEEP").is_some() {
            return;
        }
        let api = Api::<Namespace>::all(self.admin().clone());
        for name in meshes.iter().flat_map(FailoverMesh::namespace_names) {
            // Gone already, or never created: either way not there.
            let _ = api.delete(&name, &Default::default()).await;
        }
    }

    /// For each mesh, its DestinationRules and VirtualServices as the API server stores them
    /// (without `managedFields`), in a fixed order: two cluster-wide lists in all.
    pub async fn stored(&self, meshes: &[FailoverMesh]) -> Vec<Vec<Value>> {
        let mut owner: BTreeMap<String, usize> = BTreeMap::new();
        for (i, mesh) in meshes.iter().enumerate() {
            for namespace in mesh.namespace_names() {
                owner.insert(namespace, i);
            }
        }
        let mut out: Vec<Vec<Value>> = vec![Vec::new(); meshes.len()];
        for kind in STORED {
            let resource = kind.resource();
            let list = Api::<DynamicObject>::all_with(self.admin().clone(), &resource)
                .list(&ListParams::default())
                .await
                .unwrap_or_else(|err| panic!("list {}: {err}", kind.name()));
            for item in list.items {
                let namespace = item.metadata.namespace.clone().unwrap_or_default();
                let Some(&i) = owner.get(&namespace) else {
                    continue;
                };
                let mut value = serde_json::to_value(item).expect("json");
                value["apiVersion"] = json!(resource.api_version);
                value["kind"] = json!(kind.name());
                if let Some(metadata) = value["metadata"].as_object_mut() {
                    metadata.remove("managedFields");
                }
                out[i].push(value);
            }
        }
        for objects in &mut out {
            objects.sort_by_key(|o| (o["kind"].as_str().map(str::to_owned), key(o)));
        }
        out
    }
}

fn resource(kind: &str) -> ApiResource {
    match kind {
        "DestinationRule" => Kind::DestinationRule.resource(),
        "VirtualService" => Kind::VirtualService.resource(),
        other => panic!("no resource for {other}"),
    }
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

/// Compiles every mesh with its `stored` objects for its client proxies, with its own root
/// namespace, in oracle processes on a blocking thread. Each answer is the compiled
/// configuration or why Istio rejected the objects.
pub async fn compile_all(
    meshes: &[FailoverMesh],
    stored: &[Vec<Value>],
) -> Vec<Result<Compiled, String>> {
    let jobs: Vec<CompileJob> = meshes
        .iter()
        .zip(stored)
        .map(|(mesh, objects)| {
            (
                mesh.world_with(objects),
                mesh.client_proxies(),
                mesh.root_namespace(),
            )
        })
        .collect();
    tokio::task::spawn_blocking(move || compile_many(&jobs))
        .await
        .expect("the oracle thread")
}

/// A prefix no other mesh of this control plane has (the breaker's test included): the
/// seed, the process and a counter.
pub fn fresh_prefix(seed: u64) -> String {
    format!("f{}", crate::mesh_gen::run::fresh_prefix(seed))
}

/// The result of shrinking.
#[derive(Debug, Clone)]
pub struct Shrunk {
    /// The smallest mesh found that still breaks the same invariant.
    pub mesh: FailoverMesh,
    /// Its violation.
    pub violation: Violation,
    /// Candidates run.
    pub tried: usize,
    /// Accepted reductions.
    pub steps: usize,
}

/// Reduces `mesh` (which broke `violation`): runs its [`FailoverMesh::shrink`] candidates in
/// chunks on fresh prefixes through `run` (which answers each mesh's violations), moves to
/// the smallest candidate of the first chunk that breaks the same class of invariant, and
/// repeats until no candidate does or the limits are reached.
pub async fn shrink(
    mesh: &FailoverMesh,
    violation: &Violation,
    limits: ShrinkLimits,
    run: impl AsyncFn(Vec<FailoverMesh>) -> Vec<Vec<Violation>>,
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
            let fresh: Vec<FailoverMesh> = chunk
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
