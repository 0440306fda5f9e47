//! A Kubernetes API to test against: the real cluster of `TEST_KUBECONFIG` (the control
//! plane `scripts/test` starts, or a user's own) behind the [`FaultProxy`], for what a real
//! server cannot produce on demand (injected faults, lost answers, the request log); or a
//! member of a [`crate::fleet::Fleet`], connected directly.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::fault_proxy::{Credentials, FaultProxy, RecordedRequest};
use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use mesh_remediation::cluster::connect::KubeConnector;
use mesh_remediation::config::Config;
use mesh_remediation::pipeline::{Invocation, Pipeline};
use mesh_remediation::remediation::Remediation;
use mesh_remediation::report::InvocationReport;
use serde_json::{Value, json};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A cluster for one test, with a namespace of its own.
pub struct TestCluster {
    /// Client for the cluster.
    pub client: kube::Client,
    /// The test's namespace (created on start).
    pub namespace: String,
    proxy: Option<FaultProxy>,
    kubeconfig: PathBuf,
    /// Per function, a client and kubeconfig with that function's group identity, when the
    /// cluster provides them (the test control plane writes
    /// `mesh-remediation-<function>.kubeconfig` beside the admin's).
    functions: HashMap<String, (kube::Client, PathBuf)>,
}

/// Hands the pipeline a fixed client.
pub struct FixedConnector(pub kube::Client);

impl KubeConnector for FixedConnector {
    fn client(&self) -> BoxFuture<'_, mesh_remediation::Result<kube::Client>> {
        let client = self.0.clone();
        Box::pin(async move { Ok(client) })
    }
}

impl TestCluster {
    /// The cluster for a behaviour test: the real cluster named by `TEST_KUBECONFIG` (what
    /// `scripts/test` starts) behind a [`FaultProxy`], with a namespace named after
    /// `prefix`. Every request of the test's clients (the admin's and each function's, with
    /// its own token, so RBAC and the admission policies apply) passes the proxy, which
    /// injects the faults the test adds ([`TestCluster::faults`]) and logs the requests
    /// ([`TestCluster::requests`]).
    pub async fn start(prefix: &str) -> TestCluster {
        let Some(admin) = std::env::var_os("TEST_KUBECONFIG") else {
            panic!(
                "fault injection needs a real API server behind the fault proxy: run \
                 scripts/test, which starts one, or set TEST_KUBECONFIG"
            );
        };
        Self::start_on(Path::new(&admin), prefix).await
    }

    /// [`TestCluster::start`] on the cluster of the admin kubeconfig at `admin` (the
    /// functions' kubeconfigs beside it, as `scripts/test-cluster` writes them).
    pub async fn start_on(admin: &Path, prefix: &str) -> TestCluster {
        let dir = admin.parent().map(Path::to_path_buf).unwrap_or_default();
        let admin = Credentials::read(admin);
        let functions: Vec<(&str, Credentials)> = FUNCTIONS
            .iter()
            .map(|f| (*f, dir.join(format!("mesh-remediation-{f}.kubeconfig"))))
            .filter(|(_, path)| path.exists())
            .map(|(f, path)| (f, Credentials::read(&path)))
            .collect();
        let others: Vec<&Credentials> = functions.iter().map(|(_, c)| c).collect();
        let proxy = FaultProxy::start(&admin, &others).await;
        let unique = unique_name(prefix);
        let write = |who: &str, credentials: &Credentials| {
            let path = std::env::temp_dir().join(format!("kubeconfig-{unique}-{who}.yaml"));
            std::fs::write(&path, credentials.kubeconfig_via(&proxy.url(), "default"))
                .expect("write kubeconfig");
            path
        };
        let admin_path = write("admin", &admin);
        let mut clients = HashMap::new();
        for (function, credentials) in &functions {
            let path = write(function, credentials);
            clients.insert((*function).to_owned(), (client_from(&path).await, path));
        }
        let mut cluster = Self::with_kubeconfig(unique, admin_path, clients).await;
        cluster.proxy = Some(proxy);
        cluster
    }

    /// A real cluster from its admin `kubeconfig` (function kubeconfigs beside it, as the
    /// test control plane writes them), creating `namespace` in it: several clusters of one
    /// test hold the same namespace.
    pub async fn connect_in(namespace: String, kubeconfig: PathBuf) -> TestCluster {
        let mut functions = HashMap::new();
        let dir = kubeconfig
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        for function in FUNCTIONS {
            let path = dir.join(format!("mesh-remediation-{function}.kubeconfig"));
            if path.exists() {
                let client = client_from(&path).await;
                functions.insert(function.to_owned(), (client, path));
            }
        }
        Self::with_kubeconfig(namespace, kubeconfig, functions).await
    }

    async fn with_kubeconfig(
        namespace: String,
        kubeconfig: PathBuf,
        functions: HashMap<String, (kube::Client, PathBuf)>,
    ) -> TestCluster {
        let client = client_from(&kubeconfig).await;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": namespace, "labels": {"istio-injection": "enabled"}}
        }))
        .expect("namespace");
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        // Each test keeps its own action budgets (BUDGET_NAMESPACE is the test's namespace,
        // see `TestCluster::vars`): one cluster-wide budget would be spent by every test.
        let budget: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": mesh_remediation::guard::budget::BUDGET_CONFIGMAP, "namespace": namespace}
        }))
        .expect("budget configmap");
        Api::<ConfigMap>::namespaced(client.clone(), &namespace)
            .create(&PostParams::default(), &budget)
            .await
            .expect("create the budget ConfigMap");
        TestCluster {
            client,
            namespace,
            proxy: None,
            kubeconfig,
            functions,
        }
    }

    /// The fault proxy in front of the cluster.
    pub fn faults(&self) -> &FaultProxy {
        self.proxy.as_ref().expect(
            "a cluster connected directly has no fault proxy: start it with TestCluster::start",
        )
    }

    /// The client `function` acts with: its group's identity when the cluster provides one
    /// (so RBAC and the admission policies apply as in production), else the admin client.
    pub fn function_client(&self, function: &str) -> kube::Client {
        self.functions
            .get(function)
            .map_or_else(|| self.client.clone(), |(client, _)| client.clone())
    }

    /// A client with `function`'s group identity on a real cluster: its own token when the
    /// cluster provides one (the test control plane), else the admin impersonating user and
    /// group `mesh-remediation-<function>` (a cluster of your own with `deploy/rbac.yaml`
    /// applied).
    pub async fn identity_of(&self, function: &str) -> kube::Client {
        if let Some((client, _)) = self.functions.get(function) {
            return client.clone();
        }
        let name = format!("mesh-remediation-{function}");
        self.impersonating(&name, &[&name]).await
    }

    /// The admin's client impersonating `user` in `groups`.
    pub async fn impersonating(&self, user: &str, groups: &[&str]) -> kube::Client {
        let mut config = kube_config(&self.kubeconfig).await;
        config.auth_info.impersonate = Some(user.to_owned());
        config.auth_info.impersonate_groups =
            Some(groups.iter().map(|g| (*g).to_owned()).collect());
        mesh_remediation::cluster::connect::tune(&mut config, Duration::from_secs(10));
        kube::Client::try_from(config).expect("client")
    }

    /// A kubeconfig for a subprocess acting as `function` (the Lambda emulator), with the
    /// function's group identity when the cluster provides one.
    pub fn function_kubeconfig_path(&self, function: &str) -> &Path {
        self.functions
            .get(function)
            .map_or(self.kubeconfig.as_path(), |(_, path)| path.as_path())
    }

    /// Every request the test's clients sent so far, from the fault proxy's log.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.faults().requests()
    }

    /// How many writes (PATCH) to `resource` (`deployments`, `virtualservices`) the server
    /// refused as conflicts (409): a precondition that did what it is there for.
    pub fn refused_writes(&self, resource: &str) -> usize {
        let path = format!("/{resource}/");
        self.requests()
            .iter()
            .filter(|r| r.method == "PATCH" && r.path.contains(&path) && r.status == 409)
            .count()
    }

    /// Forgets the requests so far.
    pub fn clear_requests(&self) {
        self.faults().clear_requests();
    }

    /// A kubeconfig file for subprocesses (the Lambda emulator).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// Creates a Deployment, opted in or not, and waits until its rollout settled.
    pub async fn create_deployment(&self, name: &str, opted_in: bool) -> Deployment {
        let mut labels = json!({"app": name});
        if opted_in {
            labels["auto_remediation"] = json!("active");
        }
        let deployment: Deployment = serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": self.namespace, "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.9"}]}
                }
            }
        }))
        .expect("deployment");
        self.deployments()
            .create(&PostParams::default(), &deployment)
            .await
            .expect("create deployment");
        self.wait_settled(name).await
    }

    /// Deployments of the test namespace.
    pub fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The Deployment as stored.
    pub async fn deployment(&self, name: &str) -> Deployment {
        self.deployments().get(name).await.expect("get deployment")
    }

    /// Asserts the Deployment `name` is stored as it was `before` (its `resourceVersion`):
    /// nothing wrote it since.
    pub async fn assert_unchanged(&self, name: &str, before: &Deployment) {
        let now = self.deployment(name).await;
        assert_eq!(
            now.metadata.resource_version,
            before.metadata.resource_version
        );
    }

    /// The stored `metadata.generation` of the Deployment `name` (it moves on every change
    /// to the spec or the annotations).
    pub async fn generation(&self, name: &str) -> i64 {
        self.deployment(name)
            .await
            .metadata
            .generation
            .expect("generation")
    }

    /// Waits (up to two minutes on a real cluster) until the Deployment's rollout settled.
    pub async fn wait_settled(&self, name: &str) -> Deployment {
        for _ in 0..240 {
            let d = self.deployment(name).await;
            if mesh_remediation::remediation::latency_restart::rollout_in_progress(&d).is_none() {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!("deployment {name} did not settle");
    }

    /// Whether an Event of the functions about the object `name` records `action`.
    pub async fn has_event(&self, name: &str, action: &str) -> bool {
        self.events_about(name)
            .await
            .iter()
            .any(|e| e["action"] == action)
    }

    /// Events (events.k8s.io/v1) the functions wrote in the test namespace about the object
    /// `name`. A real cluster's controllers write their own (the deployment controller's
    /// `ScalingReplicaSet`); those are not ours to count.
    pub async fn events_about(&self, name: &str) -> Vec<Value> {
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            &self.namespace,
            &mesh_remediation::pipeline::event_resource(),
        );
        let list = api.list(&ListParams::default()).await.expect("list events");
        list.items
            .into_iter()
            .map(|e| serde_json::to_value(e).expect("event json"))
            .filter(|e| e["regarding"]["name"] == name)
            .filter(|e| {
                e["reportingController"].as_str().is_some_and(|c| {
                    c.starts_with(mesh_remediation::cluster::record::ANNOTATION_PREFIX)
                })
            })
            .collect()
    }

    /// A pipeline for `remediation` against this cluster. `vars` override the environment
    /// (`DRY_RUN` defaults to `false` here so tests see real changes).
    pub fn pipeline<R: Remediation>(&self, remediation: R, vars: &[(&str, &str)]) -> Pipeline<R> {
        let client = self.function_client(remediation.name());
        pipeline_with(client, remediation, &self.vars(vars))
    }

    /// `vars` plus this test's budget location (`BUDGET_NAMESPACE`, unless `vars` sets it).
    pub fn vars<'a>(&'a self, vars: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut all = vec![("BUDGET_NAMESPACE", self.namespace.as_str())];
        all.extend_from_slice(vars);
        all
    }

    /// A client for this cluster whose requests time out after `timeout`, as
    /// `API_TIMEOUT_SECONDS` sets it in the function.
    pub async fn client_with_timeout(&self, timeout: Duration) -> kube::Client {
        client_with_timeout(&self.kubeconfig, timeout).await
    }

    /// A pipeline like [`TestCluster::pipeline`] whose client honours `API_TIMEOUT_SECONDS`
    /// from `vars`, as the function's own client does.
    pub async fn timed_pipeline<R: Remediation>(
        &self,
        remediation: R,
        vars: &[(&str, &str)],
    ) -> Pipeline<R> {
        let config = config(&self.vars(vars));
        let path = self
            .function_kubeconfig_path(remediation.name())
            .to_path_buf();
        let client = client_with_timeout(&path, config.api_timeout).await;
        Pipeline::new(config, remediation, Arc::new(FixedConnector(client)))
    }

    /// Runs one event through a fresh [`TestCluster::timed_pipeline`] as the Lambda
    /// invocation `invocation` (its request id, trace id and deadline).
    pub async fn invoke_with<R: Remediation>(
        &self,
        remediation: R,
        vars: &[(&str, &str)],
        event: &Value,
        invocation: &Invocation,
    ) -> InvocationReport {
        self.timed_pipeline(remediation, vars)
            .await
            .handle(event, invocation)
            .await
    }

    /// Runs one event through a fresh pipeline, as one Lambda invocation would.
    pub async fn invoke<R: Remediation>(
        &self,
        remediation: R,
        vars: &[(&str, &str)],
        event: &Value,
    ) -> InvocationReport {
        let pipeline = self.pipeline(remediation, vars);
        let request_id = format!("req-{}", COUNTER.fetch_add(1, Ordering::SeqCst));
        let invocation = Invocation::new(
            &request_id,
            Some("Root=1-67a1b2c3-0123456789abcdef01234567;Sampled=1"),
            None,
        );
        pipeline.handle(event, &invocation).await
    }
}

/// The remediation functions, by name.
const FUNCTIONS: [&str; 4] = [
    "latency-restart",
    "error-rollback",
    "db-circuit-break",
    "region-failover",
];

/// A namespace name for one test: `prefix`, the process and a counter.
pub fn unique_name(prefix: &str) -> String {
    format!(
        "{}-{}-{}",
        prefix,
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// No cooldown and no escalation: a function may act on the same target again at once.
pub const NO_COOLDOWN: [(&str, &str); 2] = [("COOLDOWN_SECONDS", "0"), ("ESCALATE_AFTER", "0")];

/// A configuration from defaults plus `vars` (`DRY_RUN=false` unless given).
pub fn config(vars: &[(&str, &str)]) -> Config {
    let mut map: HashMap<String, String> =
        HashMap::from([("DRY_RUN".to_owned(), "false".to_owned())]);
    for (k, v) in vars {
        map.insert((*k).to_owned(), (*v).to_owned());
    }
    Config::from_lookup(|k| map.get(k).cloned()).expect("valid test configuration")
}

/// A client from a kubeconfig file.
pub async fn client_from(path: &Path) -> kube::Client {
    client_with_timeout(path, Duration::from_secs(10)).await
}

/// A client from a kubeconfig file whose requests time out after `timeout`, tuned like
/// the function's (no hidden retries).
pub async fn client_with_timeout(path: &Path, timeout: Duration) -> kube::Client {
    let mut config = kube_config(path).await;
    mesh_remediation::cluster::connect::tune(&mut config, timeout);
    kube::Client::try_from(config).expect("client")
}

async fn kube_config(path: &Path) -> kube::Config {
    let kubeconfig = kube::config::Kubeconfig::read_from(path).expect("read kubeconfig");
    kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
        .await
        .expect("kubeconfig is usable")
}

/// A pipeline for `remediation` acting with `client`; `vars` override the environment.
pub fn pipeline_with<R: Remediation>(
    client: kube::Client,
    remediation: R,
    vars: &[(&str, &str)],
) -> Pipeline<R> {
    Pipeline::new(config(vars), remediation, Arc::new(FixedConnector(client)))
}
