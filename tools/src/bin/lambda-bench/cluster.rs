//! The real control plane the bench acts on (`--kubeconfig`: the admin kubeconfig that
//! `scripts/test-cluster` writes, the functions' beside it), behind the test kit's fault
//! proxy, which injects the storm's latency and logs every request. Each phase gets a
//! namespace of its own. Its Deployments run no replicas: a restart is then the function's
//! work alone, not 200 pods' worth of controller and KWOK load on the machine measured.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{ListParams, PostParams};
use mesh_remediation::remediation::latency_restart::rollout_in_progress;
use remediation_testkit::TestCluster;
use remediation_testkit::fault_proxy::{Credentials, Fault, FaultKind, RecordedRequest};
use serde_json::json;

/// How long seeded Deployments may take to be observed by the deployment controller.
const SETTLE: Duration = Duration::from_secs(120);

pub struct BenchCluster {
    cluster: TestCluster,
}

impl BenchCluster {
    /// A fresh namespace on the control plane of the admin kubeconfig `admin`, behind a
    /// fresh fault proxy.
    pub async fn start(admin: &Path, phase: &str) -> BenchCluster {
        BenchCluster {
            cluster: TestCluster::start_on(admin, &format!("bench-{phase}")).await,
        }
    }

    pub fn namespace(&self) -> &str {
        &self.cluster.namespace
    }

    /// latency-restart's own kubeconfig (its group's token), through the fault proxy.
    pub fn kubeconfig(&self) -> &Path {
        self.cluster.function_kubeconfig_path("latency-restart")
    }

    /// Where the fault proxy listens.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.cluster.faults().addr()
    }

    /// latency-restart's kubeconfig pointed at `url` instead (a timing pass-through in
    /// front of the fault proxy).
    pub fn kubeconfig_via(&self, url: &str) -> String {
        Credentials::read(self.kubeconfig()).kubeconfig_via(url, self.namespace())
    }

    /// Creates opted-in Deployments `names` and waits until the deployment controller has
    /// observed every one (a restart of an unobserved one is held as a rollout in progress).
    pub async fn seed(&self, names: &[String]) -> Result<(), String> {
        let api = self.cluster.deployments();
        for name in names {
            let deployment: Deployment = serde_json::from_value(json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name, "labels": {"app": name, "auto_remediation": "active"}},
                "spec": {
                    "replicas": 0,
                    "selector": {"matchLabels": {"app": name}},
                    "template": {
                        "metadata": {"labels": {"app": name}},
                        "spec": {"containers": [{"name": "app", "image": format!("example/{name}:1.0"),
                                                 "ports": [{"containerPort": 8080}]}]}
                    }
                }
            }))
            .map_err(|e| e.to_string())?;
            api.create(&PostParams::default(), &deployment)
                .await
                .map_err(|e| format!("create Deployment {name}: {e}"))?;
        }
        let started = Instant::now();
        loop {
            let list = api
                .list(&ListParams::default())
                .await
                .map_err(|e| format!("list Deployments: {e}"))?;
            let pending = list
                .items
                .iter()
                .filter(|d| rollout_in_progress(d).is_some())
                .count();
            if pending == 0 {
                return Ok(());
            }
            if started.elapsed() > SETTLE {
                return Err(format!(
                    "{pending} seeded Deployments were not observed within {SETTLE:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every request from now on answered `ms` after it arrived, or when the server has
    /// answered if that takes longer: a remote API server `ms` away.
    pub fn answer_after(&self, ms: u64) {
        self.cluster
            .faults()
            .add_fault(Fault::new(FaultKind::AnswerAfter { ms }));
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.cluster.requests()
    }

    pub fn clear_requests(&self) {
        self.cluster.clear_requests();
    }
}

/// The control plane's own processes on this machine (kube-apiserver and etcd), for their
/// CPU time; none when the cluster is elsewhere.
pub fn server_pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| matches!(c.trim(), "kube-apiserver" | "etcd"))
        })
        .collect()
}
