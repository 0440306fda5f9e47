//! The operator's tool as a person runs it: the built `kubectl-mesh_remediation` binary,
//! against one kubeconfig that holds several clusters as contexts.

use std::path::{Path, PathBuf};

use mesh_remediation::remediation::ErrorRollback;
use mesh_remediation::report::OutcomeKind;
use serde_json::json;
use serde_yaml::{Mapping, Value};

use crate::lambda_emulator;
use crate::mesh::{Mesh, only};
use crate::{TestCluster, events};

/// The plugin's debug binary, built on demand.
pub fn binary() -> PathBuf {
    lambda_emulator::binary("kubectl-mesh-remediation", "kubectl-mesh_remediation")
}

/// What one run printed.
#[derive(Debug)]
pub struct Run {
    /// Whether it exited 0.
    pub ok: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    /// Standard output, asserting the run succeeded.
    pub fn out(&self) -> &str {
        assert!(self.ok, "the plugin failed: {self:#?}");
        &self.stdout
    }

    /// Standard output parsed as JSON (`-o json`), asserting success.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.out()).unwrap_or_else(|err| panic!("{err}: {self:#?}"))
    }

    /// Standard error, asserting the run failed.
    pub fn error(&self) -> &str {
        assert!(!self.ok, "the plugin succeeded: {self:#?}");
        &self.stderr
    }

    /// Asserts the run failed with an error that says `text`.
    pub fn fails_saying(&self, text: &str) {
        assert!(
            self.error().contains(text),
            "an error saying {text:?} expected: {self:#?}"
        );
    }
}

/// Runs the plugin with `kubeconfig`, `args` and `env`, in an environment that names no
/// other kubeconfig or budget setting.
pub async fn run(binary: &Path, kubeconfig: &Path, args: &[&str], env: &[(&str, String)]) -> Run {
    run_in(binary, Some(kubeconfig), args, env).await
}

/// [`run`], with `--kubeconfig` only when given (else `env` may set `KUBECONFIG`).
pub async fn run_in(
    binary: &Path,
    kubeconfig: Option<&Path>,
    args: &[&str],
    env: &[(&str, String)],
) -> Run {
    let mut command = tokio::process::Command::new(binary);
    if let Some(kubeconfig) = kubeconfig {
        command.arg("--kubeconfig").arg(kubeconfig);
    }
    command.args(args);
    for var in [
        "KUBECONFIG",
        "BUDGET_NAMESPACE",
        "BUDGET_WINDOW_SECONDS",
        "MAX_ACTIONS_PER_WINDOW",
        "MAX_CLUSTER_ACTIONS_PER_WINDOW",
        "ALERT_TOPIC_ARN",
    ] {
        command.env_remove(var);
    }
    command.envs(env.iter().map(|(k, v)| (k, v)));
    let output = command.output().await.expect("run the plugin");
    Run {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Writes to `out` one kubeconfig whose contexts are `clusters` (name, kubeconfig): each
/// kubeconfig's current context, renamed, with its cluster and user; the first is current.
pub fn merge_kubeconfigs(clusters: &[(&str, &Path)], out: &Path) {
    let mut merged = Mapping::new();
    let (mut contexts, mut servers, mut users) = (vec![], vec![], vec![]);
    for (name, path) in clusters {
        let text =
            std::fs::read_to_string(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        let config: Value = serde_yaml::from_str(&text).expect("kubeconfig YAML");
        let current = config["current-context"].as_str().expect("current context");
        let named = |list: &str, key: &str| -> Value {
            config[list]
                .as_sequence()
                .into_iter()
                .flatten()
                .find(|entry| entry["name"].as_str() == Some(key))
                .unwrap_or_else(|| panic!("{}: no {list} entry {key}", path.display()))
                .clone()
        };
        let mut context = named("contexts", current);
        let cluster = context["context"]["cluster"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let user = context["context"]["user"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let mut server = named("clusters", &cluster);
        let mut account = named("users", &user);
        for entry in [&mut context, &mut server, &mut account] {
            entry["name"] = Value::from(*name);
        }
        context["context"]["cluster"] = Value::from(*name);
        context["context"]["user"] = Value::from(*name);
        contexts.push(context);
        servers.push(server);
        users.push(account);
    }
    merged.insert("apiVersion".into(), "v1".into());
    merged.insert("kind".into(), "Config".into());
    merged.insert("clusters".into(), Value::Sequence(servers));
    merged.insert("users".into(), Value::Sequence(users));
    merged.insert("contexts".into(), Value::Sequence(contexts));
    if let Some((first, _)) = clusters.first() {
        merged.insert("current-context".into(), Value::from(*first));
    }
    let text = serde_yaml::to_string(&merged).expect("kubeconfig YAML");
    std::fs::write(out, text).unwrap_or_else(|err| panic!("{}: {err}", out.display()));
}

/// A VirtualService `checkout` splitting 50/50 between subsets v1 (the stable one) and v2, in
/// `cluster`'s namespace, which error-rollback then routed to v1: something to revert.
/// Returns the VirtualService as it was before the rollback.
pub async fn rolled_back_checkout(cluster: &TestCluster) -> serde_json::Value {
    let subsets = [
        ("v1", json!({"version": "v1"}), 50),
        ("v2", json!({"version": "v2"}), 50),
    ];
    let stable = json!({"auto-remediation.io/stable-subset": "v1"});
    let before = Mesh::new(cluster)
        .subset_split("checkout", &subsets, stable, json!({"hosts": ["checkout"]}))
        .await;
    let firing = events::fresh("error-rollback-firing.json", &cluster.namespace);
    let applied = cluster.invoke(ErrorRollback, &[], &firing).await;
    assert_eq!(only(&applied).outcome, OutcomeKind::Applied, "{applied:#?}");
    before
}
