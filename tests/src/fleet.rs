//! Several real clusters at once, for the multi-cluster tests: each member is a control plane
//! of its own (`scripts/test-cluster`: etcd, kube-apiserver with RBAC, TLS and the admission
//! policies, controller-manager, scheduler, KWOK), holding one namespace of the same name, and
//! the functions reach each member with their own group's kubeconfig through
//! `CLUSTER_NAMES` and `CLUSTER_KUBECONFIGS`, as a deployment reaches its EKS clusters.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_remediation::cluster::connect::{AwsClusterDirectory, Connections};
use mesh_remediation::pipeline::{Invocation, Pipeline};
use mesh_remediation::remediation::Remediation;
use mesh_remediation::report::InvocationReport;
use serde_json::Value;

use crate::cluster::{TestCluster, config, unique_name};
use crate::events::workspace_root;

/// One cluster of a [`Fleet`].
pub struct Member {
    /// Its name, as `CLUSTER_NAMES` and the alerts' `cluster` label give it.
    pub name: String,
    /// The cluster, with the fleet's namespace.
    pub cluster: TestCluster,
    dir: PathBuf,
    harness: Option<Child>,
}

/// Clusters started for one test.
pub struct Fleet {
    /// The members, in the order given.
    pub members: Vec<Member>,
    /// The namespace each member holds.
    pub namespace: String,
}

impl Fleet {
    /// Starts one control plane per name, concurrently, and creates the namespace in each.
    pub async fn start(prefix: &str, names: &[&str]) -> Fleet {
        let namespace = unique_name(prefix);
        let started = names.iter().map(|name| {
            let dir = std::env::temp_dir().join(format!("fleet-{namespace}-{name}"));
            tokio::task::spawn_blocking(move || start_control_plane(&dir).map(|h| (dir, h)))
        });
        let mut members = Vec::new();
        for (name, started) in names.iter().zip(futures::future::join_all(started).await) {
            let (dir, harness) = started.expect("join").unwrap_or_else(|err| panic!("{err}"));
            let kubeconfig = dir.join("admin.kubeconfig");
            let cluster = TestCluster::connect_in(namespace.clone(), kubeconfig).await;
            members.push(Member {
                name: (*name).to_owned(),
                cluster,
                dir,
                harness: Some(harness),
            });
        }
        Fleet { members, namespace }
    }

    /// The member called `name`.
    pub fn member(&self, name: &str) -> &Member {
        self.members
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no member {name}"))
    }

    /// Stops `name`'s control plane: from now on its API server refuses connections.
    pub fn stop(&mut self, name: &str) {
        let member = self
            .members
            .iter_mut()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no member {name}"));
        member.stop();
    }

    /// The environment that points `function` at every member: `CLUSTER_NAMES`, and
    /// `CLUSTER_KUBECONFIGS` with the function's own group kubeconfig in each, and this fleet's
    /// budget location.
    pub fn vars(&self, function: &str) -> Vec<(String, String)> {
        let names: Vec<&str> = self.members.iter().map(|m| m.name.as_str()).collect();
        let kubeconfigs: Vec<String> = self
            .members
            .iter()
            .map(|m| {
                format!(
                    "{}={}",
                    m.name,
                    m.cluster.function_kubeconfig_path(function).display()
                )
            })
            .collect();
        vec![
            ("CLUSTER_NAMES".to_owned(), names.join(",")),
            ("CLUSTER_KUBECONFIGS".to_owned(), kubeconfigs.join(",")),
            ("BUDGET_NAMESPACE".to_owned(), self.namespace.clone()),
        ]
    }

    /// Runs one event through a fresh pipeline that reaches every member, as one Lambda
    /// invocation of a deployment serving these clusters would (configured by [`Fleet::vars`]
    /// alone).
    pub async fn invoke<R: Remediation>(&self, remediation: R, event: &Value) -> InvocationReport {
        let vars = self.vars(remediation.name());
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let config = config(&vars);
        // Every member is reached by kubeconfig; the EKS directory is never asked.
        let connections = Connections::for_clusters(
            &config.clusters,
            config.api_timeout,
            Arc::new(AwsClusterDirectory::default()),
        );
        let pipeline = Pipeline::with_connections(config, remediation, connections);
        let invocation = Invocation::new(&unique_name("req-fleet"), None, None);
        pipeline.handle(event, &invocation).await
    }
}

impl Member {
    fn stop(&mut self) {
        if let Some(mut harness) = self.harness.take() {
            // SIGKILL: the harness's children get SIGKILL with it (PR_SET_PDEATHSIG).
            let _ = harness.kill();
            let _ = harness.wait();
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.stop();
        // A failing test keeps the control plane's logs to read; a passing one leaves nothing.
        let keep = if std::thread::panicking() {
            self.dir.join("etcd-data")
        } else {
            self.dir.clone()
        };
        let _ = std::fs::remove_dir_all(keep);
    }
}

/// Starts `scripts/test-cluster --dir dir` and waits for its ready line (minutes on a cold
/// machine, which builds the control plane first; seconds on a warm one).
fn start_control_plane(dir: &Path) -> Result<Child, String> {
    std::fs::create_dir_all(dir).map_err(|err| format!("{}: {err}", dir.display()))?;
    let ready = dir.join("ready.json");
    let log = dir.join("harness.log");
    let out = std::fs::File::create(&ready).map_err(|err| err.to_string())?;
    let err = std::fs::File::create(&log).map_err(|err| err.to_string())?;
    let mut harness = Command::new(workspace_root().join("scripts/test-cluster"))
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|err| format!("scripts/test-cluster: {err}"))?;
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        if std::fs::metadata(&ready).is_ok_and(|m| m.len() > 0) {
            return Ok(harness);
        }
        if let Ok(Some(status)) = harness.try_wait() {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!(
                "the control plane in {} did not start ({status}):\n{log}",
                dir.display()
            ));
        }
        if Instant::now() > deadline {
            let _ = harness.kill();
            return Err(format!(
                "the control plane in {} did not start in time",
                dir.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
