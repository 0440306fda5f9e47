//! Local invoke the way Lambda users do it, with the commands and settings the README gives:
//! `scripts/local-cluster` (the real control plane seeded with the demo mesh),
//! `cargo lambda watch --env-file local/cargo-lambda.env` and
//! `cargo lambda invoke <function> --data-file events/<sample>.json` for every sample, each
//! checked for its documented outcome and its effect on the cluster. The SAM settings
//! (`local/sam-env.json`) run the function under the Lambda Runtime Interface Emulator.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject};
use mesh_remediation::remediation::istio;
use remediation_testkit::events::workspace_root;
use remediation_testkit::lambda_emulator::{Emulator, emulator_path, function_binary};
use serde_json::{Value, json};

/// A process group, stopped on drop as Ctrl-C stops it (SIGINT to the group), then killed
/// if it is still there after 30 s.
struct Group(Child);

impl Group {
    fn signal(&self, signal: &str) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill")
            .args(["-s", signal, "--", &group])
            .status();
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.signal("INT");
        let start = Instant::now();
        while matches!(self.0.try_wait(), Ok(None)) {
            if start.elapsed() > Duration::from_secs(30) {
                self.signal("KILL");
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.wait();
    }
}

fn path_with_venv() -> String {
    format!(
        "{}:{}",
        workspace_root().join(".venv/bin").display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// Runs a README command line (split on spaces) from the repository root.
fn command(line: &str) -> Command {
    let mut parts = line.split_whitespace();
    let mut command = Command::new(parts.next().expect("program"));
    // As a user runs them: not under the test runner's cargo jobserver, whose file
    // descriptors mean something else (or nothing) in the children.
    command
        .args(parts)
        .current_dir(workspace_root())
        .env("PATH", path_with_venv())
        .env_remove("CARGO_MAKEFLAGS")
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .stdin(Stdio::null());
    command
}

fn spawn_group(line: &str, log: &Path) -> Group {
    let file = std::fs::File::create(log).expect("log");
    let child = command(line)
        .stdout(Stdio::from(file.try_clone().expect("dup")))
        .stderr(Stdio::from(file))
        .process_group(0)
        .spawn()
        .unwrap_or_else(|err| panic!("{line}: {err}"));
    Group(child)
}

fn wait_for(what: &str, log: &Path, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < timeout,
            "{what} not ready after {timeout:?}:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `cargo lambda invoke <function> --data-file events/<sample>`: the function's answer.
fn invoke(function: &str, sample: &str) -> Value {
    let line = format!("cargo lambda invoke {function} --data-file events/{sample}");
    let out = command(&line).output().expect("cargo lambda invoke");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{line}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|err| panic!("{line}: {err}: {stdout}"))
}

/// The outcome of each alert of a report: (outcome, reason).
fn outcomes(report: &Value) -> Vec<(String, String)> {
    report["outcomes"]
        .as_array()
        .expect("outcomes")
        .iter()
        .map(|o| {
            (
                o["outcome"].as_str().unwrap_or_default().to_owned(),
                o["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn assert_outcome(function: &str, sample: &str, expected: &str, reason: &str) -> Value {
    let report = invoke(function, sample);
    let got = outcomes(&report);
    assert!(
        !got.is_empty() && got.iter().all(|(o, r)| o == expected && r.contains(reason)),
        "{function} {sample}: expected {expected} ({reason}), got {got:#?}"
    );
    report
}

async fn stored(client: &kube::Client, kind: &str, name: &str) -> Value {
    let config = mesh_remediation::config::Config::from_lookup(|_| None).expect("config");
    let resource = match kind {
        "VirtualService" => istio::virtual_service(&config),
        "DestinationRule" => istio::destination_rule(&config),
        _ => kube::api::ApiResource::erase::<k8s_openapi::api::apps::v1::Deployment>(&()),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "shop", &resource);
    serde_json::to_value(api.get(name).await.expect("get")).expect("json")
}

fn weights(vs: &Value) -> Vec<i64> {
    vs["spec"]["http"][0]["route"]
        .as_array()
        .expect("route")
        .iter()
        .map(istio::weight)
        .collect()
}

fn restarted_at(deployment: &Value) -> Option<String> {
    deployment["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
        .as_str()
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sample_gives_its_documented_outcome_through_cargo_lambda() {
    let logs = std::env::temp_dir().join(format!("local-invoke-{}", std::process::id()));
    std::fs::create_dir_all(&logs).expect("log dir");
    let ready = workspace_root().join(".local/ready");
    let _ = std::fs::remove_file(&ready);
    let cluster_log = logs.join("local-cluster.log");
    let _cluster = spawn_group("scripts/local-cluster", &cluster_log);
    wait_for(
        "scripts/local-cluster",
        &cluster_log,
        Duration::from_secs(600),
        || ready.exists(),
    );
    let watch_log = logs.join("watch.log");
    let _watch = spawn_group(
        "cargo lambda watch --env-file local/cargo-lambda.env --ignore-changes",
        &watch_log,
    );
    wait_for(
        "cargo lambda watch",
        &watch_log,
        Duration::from_secs(120),
        || std::net::TcpStream::connect("127.0.0.1:9000").is_ok(),
    );
    let kubeconfig =
        kube::config::Kubeconfig::read_from(workspace_root().join(".local/kubeconfig"))
            .expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("config");
    let client = kube::Client::try_from(config).expect("client");
    // The demo Deployments roll out on the cluster's own controllers (KWOK runs the Pods).
    for name in ["checkout-v2", "orders"] {
        let start = Instant::now();
        loop {
            let d = stored(&client, "Deployment", name).await;
            if d["status"]["updatedReplicas"] == 2 && d["status"]["availableReplicas"] == 2 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "{name} never rolled out: {d}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    // latency-restart: bad input first (nothing changes), then the alerts.
    let before = restarted_at(&stored(&client, "Deployment", "checkout-v2").await);
    for (sample, reason) in [
        ("bad-not-json.json", "not JSON"),
        ("bad-default-template.json", "default plain-text"),
        ("bad-truncated.json", "truncated"),
        ("bad-unknown-remediation.json", "unknown remediation"),
        ("bad-not-sns.json", "neither a Lambda SNS event"),
        (
            "latency-restart-bad-missing-deployment.json",
            "no `deployment` label",
        ),
        (
            "latency-restart-bad-invalid-names.json",
            "not a valid Kubernetes name",
        ),
    ] {
        assert_outcome("latency-restart", sample, "failed", reason);
    }
    assert_outcome(
        "latency-restart",
        "latency-restart-drill.json",
        "dry-run",
        "drill",
    );
    assert_outcome(
        "latency-restart",
        "latency-restart-dry-run.json",
        "dry-run",
        "dry_run label",
    );
    assert_eq!(
        restarted_at(&stored(&client, "Deployment", "checkout-v2").await),
        before
    );
    assert_outcome(
        "latency-restart",
        "latency-restart-firing.json",
        "applied",
        "",
    );
    let restarted = restarted_at(&stored(&client, "Deployment", "checkout-v2").await);
    assert!(
        restarted.is_some() && restarted != before,
        "checkout-v2 restarted"
    );
    assert_outcome(
        "latency-restart",
        "latency-restart-direct-invoke.json",
        "skipped",
        "cooldown",
    );
    assert_outcome(
        "latency-restart",
        "latency-restart-resolved.json",
        "skipped",
        "recovery recorded",
    );
    let multi = outcomes(&invoke("latency-restart", "latency-restart-multi.json"));
    let kinds: Vec<&str> = multi.iter().map(|(o, _)| o.as_str()).collect();
    assert_eq!(
        kinds,
        ["skipped", "applied", "skipped", "skipped"],
        "{multi:#?}"
    );
    assert!(restarted_at(&stored(&client, "Deployment", "orders").await).is_some());

    // error-rollback: drill, firing, revert, resolved.
    assert_outcome(
        "error-rollback",
        "error-rollback-drill.json",
        "dry-run",
        "drill",
    );
    assert_eq!(
        weights(&stored(&client, "VirtualService", "checkout").await),
        [50, 50]
    );
    assert_outcome(
        "error-rollback",
        "error-rollback-firing.json",
        "applied",
        "",
    );
    assert_eq!(
        weights(&stored(&client, "VirtualService", "checkout").await),
        [100, 0]
    );
    assert_outcome(
        "error-rollback",
        "error-rollback-revert.json",
        "applied",
        "",
    );
    assert_eq!(
        weights(&stored(&client, "VirtualService", "checkout").await),
        [50, 50]
    );
    assert_outcome(
        "error-rollback",
        "error-rollback-resolved.json",
        "skipped",
        "recovery recorded",
    );

    // db-circuit-break: the breaker on the database host, then reverted.
    let rule_before = stored(&client, "DestinationRule", "orders-db").await["spec"].clone();
    assert_outcome(
        "db-circuit-break",
        "db-circuit-break-drill.json",
        "dry-run",
        "drill",
    );
    assert_outcome(
        "db-circuit-break",
        "db-circuit-break-firing.json",
        "applied",
        "",
    );
    let policy =
        stored(&client, "DestinationRule", "orders-db").await["spec"]["trafficPolicy"].clone();
    assert_eq!(
        policy["connectionPool"]["tcp"]["maxConnections"], 100,
        "{policy}"
    );
    assert_eq!(policy["tls"], json!({"mode": "ISTIO_MUTUAL"}));
    assert_outcome(
        "db-circuit-break",
        "db-circuit-break-revert.json",
        "applied",
        "",
    );
    assert_eq!(
        stored(&client, "DestinationRule", "orders-db").await["spec"],
        rule_before
    );
    assert_outcome(
        "db-circuit-break",
        "db-circuit-break-resolved.json",
        "skipped",
        "already equals",
    );

    // region-failover: us-east-1 drained, then reverted.
    assert_outcome(
        "region-failover",
        "region-failover-drill.json",
        "dry-run",
        "drill",
    );
    assert_eq!(
        weights(&stored(&client, "VirtualService", "frontend").await),
        [60, 30, 10]
    );
    assert_outcome(
        "region-failover",
        "region-failover-firing.json",
        "applied",
        "",
    );
    assert_eq!(
        weights(&stored(&client, "VirtualService", "frontend").await),
        [0, 75, 25]
    );
    assert_outcome(
        "region-failover",
        "region-failover-revert.json",
        "applied",
        "",
    );
    assert_eq!(
        weights(&stored(&client, "VirtualService", "frontend").await),
        [60, 30, 10]
    );
    assert_outcome(
        "region-failover",
        "region-failover-resolved.json",
        "skipped",
        "recovery recorded",
    );
}

/// The variables of an env file in `KEY=VALUE` lines.
fn env_file(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .expect("env file")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').expect("KEY=VALUE");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

#[tokio::test]
async fn the_sam_settings_run_the_function_under_the_lambda_emulator() {
    if emulator_path().is_none() {
        panic!("the Lambda Runtime Interface Emulator is missing: run scripts/setup");
    }
    // A task root like SAM's /var/task: the bootstrap and, beside it, the kubeconfig that
    // scripts/local-cluster copies into each `sam build` output directory.
    let cluster = remediation_testkit::TestCluster::start("local-sam").await;
    let root: PathBuf = std::env::temp_dir().join(format!("sam-task-{}", std::process::id()));
    std::fs::create_dir_all(&root).expect("task root");
    std::fs::copy(cluster.kubeconfig_path(), root.join("kubeconfig")).expect("kubeconfig");
    let sam: Value = serde_json::from_str(
        &std::fs::read_to_string(workspace_root().join("local/sam-env.json")).expect("sam env"),
    )
    .expect("json");
    let vars: Vec<(String, String)> = sam["Parameters"]
        .as_object()
        .expect("Parameters")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
        .collect();
    assert_eq!(
        vars.iter()
            .find(|(k, _)| k == "KUBECONFIG")
            .map(|(_, v)| v.as_str()),
        Some("kubeconfig"),
        "relative to the task root"
    );
    let env: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let emulator = Emulator::start_in(&function_binary("latency-restart"), &env, Some(&root)).await;
    let event = remediation_testkit::events::raw("latency-restart-firing.json");
    let (status, answer) = emulator.invoke(&event).await;
    assert_eq!(status, 200, "{answer}");
    // The sample names namespace shop, which this cluster does not have: the function
    // reached the API server through the task root's kubeconfig and found no Deployment.
    assert_eq!(answer["outcomes"][0]["outcome"], "failed", "{answer}");
    assert!(
        answer["outcomes"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("checkout-v2 not found")),
        "{answer}\n{}",
        emulator.logs()
    );
    // The cargo lambda settings name the same variables the functions read.
    let cargo = env_file(&workspace_root().join("local/cargo-lambda.env"));
    for key in ["DRY_RUN", "MAX_DELIVERY_AGE_SECONDS", "KUBECONFIG"] {
        assert!(
            cargo.iter().any(|(k, _)| k == key),
            "{key} in local/cargo-lambda.env"
        );
        assert!(
            vars.iter().any(|(k, _)| k == key),
            "{key} in local/sam-env.json"
        );
    }
}
