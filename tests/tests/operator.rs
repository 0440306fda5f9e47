//! `kubectl mesh-remediation` across a fleet: the built plugin runs against one kubeconfig
//! holding two real control planes as contexts (`use1`, `usw2`), and each assertion reads
//! what the clusters store (the functions' records, the pause switch and annotations) or
//! what the functions then do. Single-cluster commands are in `operator_actions`.

use std::path::PathBuf;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::Api;
use mesh_remediation::cluster::record::ActionRecord;
use mesh_remediation::remediation::LatencyRestart;
use mesh_remediation::report::OutcomeKind;
use remediation_testkit::fleet::Fleet;
use remediation_testkit::mesh::{Kind, Mesh, assert_skipped_saying, only, spec_text};
use remediation_testkit::operator::{self, Run};
use remediation_testkit::{TestCluster, events};

const TARGET: &str = "checkout-v2";

/// Two control planes and one kubeconfig naming both.
struct Operated {
    fleet: Fleet,
    kubeconfig: PathBuf,
    binary: PathBuf,
}

impl Operated {
    async fn start(prefix: &str) -> Operated {
        let binary = operator::binary();
        let fleet = Fleet::start(prefix, &["use1", "usw2"]).await;
        let kubeconfig = std::env::temp_dir().join(format!("{}.kubeconfig", fleet.namespace));
        let members: Vec<(&str, &std::path::Path)> = fleet
            .members
            .iter()
            .map(|m| (m.name.as_str(), m.cluster.kubeconfig_path()))
            .collect();
        operator::merge_kubeconfigs(&members, &kubeconfig);
        Operated {
            fleet,
            kubeconfig,
            binary,
        }
    }

    async fn run(&self, args: &[&str]) -> Run {
        operator::run(&self.binary, &self.kubeconfig, args, &[]).await
    }

    fn cluster(&self, name: &str) -> &TestCluster {
        &self.fleet.member(name).cluster
    }

    /// latency-restart's sample alert, fresh, for the fleet's namespace.
    fn firing(&self) -> serde_json::Value {
        events::fresh("latency-restart-firing.json", &self.fleet.namespace)
    }

    /// Creates the target in every cluster and fires latency-restart at it there.
    async fn restart_everywhere(&self) {
        for member in &self.fleet.members {
            let cluster = &member.cluster;
            cluster.create_deployment(TARGET, true).await;
            let report = cluster.invoke(LatencyRestart, &[], &self.firing()).await;
            assert_eq!(only(&report).outcome, OutcomeKind::Applied, "{report:#?}");
        }
    }
}

fn annotation(object: &kube::core::ObjectMeta, key: &str) -> Option<String> {
    object.annotations.as_ref()?.get(key).cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_history_show_every_record_of_every_context_as_table_json_and_yaml() {
    let op = Operated::start("op-status").await;
    let ns = op.fleet.namespace.clone();
    op.restart_everywhere().await;
    let object = format!("Deployment {ns}/{TARGET}");

    let table = op.run(&["--all-contexts", "status", "-n", &ns]).await;
    let lines: Vec<&str> = table.out().lines().collect();
    assert!(
        lines[0].starts_with("CONTEXT   OBJECT") && lines[0].ends_with("CHANGE"),
        "{table:#?}"
    );
    assert_eq!(
        lines.len(),
        3,
        "a header and one row per cluster: {table:#?}"
    );
    for context in ["use1", "usw2"] {
        assert!(
            lines.iter().any(|l| l.starts_with(context)
                && l.contains(&object)
                && l.contains("latency-restart")
                && l.contains("applied")),
            "{context}: {table:#?}"
        );
    }

    let json = op
        .run(&["--all-contexts", "status", "-n", &ns, "-o", "json"])
        .await
        .json();
    let items = json["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "{json:#}");
    for item in items {
        let context = item["context"].as_str().expect("context");
        let stored: Deployment = op.cluster(context).deployment(TARGET).await;
        let record =
            ActionRecord::from_annotations(stored.metadata.annotations.as_ref(), "latency-restart")
                .expect("readable")
                .expect("recorded");
        assert_eq!(item["object"], object.as_str());
        assert_eq!(item["function"], "latency-restart");
        assert_eq!(item["traceId"], record.trace_id.as_str(), "{item:#}");
        assert_eq!(item["alert"], record.fingerprint.as_str());
        assert_eq!(item["change"], record.change.as_str());
        assert_eq!(item["state"], "applied");
        assert_eq!(item["escalated"], false);
    }
    let yaml = op
        .run(&["--all-contexts", "status", "-n", &ns, "-o", "yaml"])
        .await;
    let from_yaml: serde_json::Value = serde_yaml::from_str(yaml.out()).expect("YAML");
    assert_eq!(from_yaml, json, "YAML and JSON say the same");

    let one = op
        .run(&[
            "--context",
            "usw2",
            "history",
            "--since",
            "1h",
            "-n",
            &ns,
            "-o",
            "json",
        ])
        .await
        .json();
    let contexts: Vec<&str> = one["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["context"].as_str())
        .collect();
    assert_eq!(contexts, vec!["usw2"]);
    let other = op
        .run(&["history", "--function", "error-rollback", "-n", &ns])
        .await;
    assert_eq!(other.out(), "No action recorded.\n");

    // KUBECONFIG as a list of files, merged as kubectl merges it.
    let files: Vec<String> = op
        .fleet
        .members
        .iter()
        .map(|m| {
            let file = std::env::temp_dir().join(format!("{ns}-{}.kubeconfig", m.name));
            operator::merge_kubeconfigs(&[(m.name.as_str(), m.cluster.kubeconfig_path())], &file);
            file.display().to_string()
        })
        .collect();
    let args = ["--all-contexts", "status", "-n", &ns, "-o", "json"];
    let env = [("KUBECONFIG", files.join(":"))];
    let merged = operator::run_in(&op.binary, None, &args, &env).await.json();
    assert_eq!(merged, json, "one kubeconfig or a list of two");

    let missing = op.run(&["--context", "euw1", "status"]).await;
    assert_eq!(
        missing.error().trim(),
        "error: context \"euw1\" is not in the kubeconfig; it has: use1, usw2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_write_what_the_functions_read_in_each_context() {
    let op = Operated::start("op-pause").await;
    let ns = op.fleet.namespace.clone();
    for member in &op.fleet.members {
        member.cluster.create_deployment(TARGET, true).await;
    }
    let switch =
        |cluster: &TestCluster| Api::<ConfigMap>::namespaced(cluster.client.clone(), "kube-system");
    let paused_value = |map: Option<ConfigMap>| map.and_then(|m| m.data?.get("paused").cloned());

    let done = op
        .run(&[
            "--all-contexts",
            "pause",
            "--cluster",
            "--reason",
            "incident 4711",
        ])
        .await;
    assert_eq!(
        done.out(),
        "[use1] paused: the whole cluster\n[usw2] paused: the whole cluster\n"
    );
    for name in ["use1", "usw2"] {
        let map = switch(op.cluster(name))
            .get_opt("mesh-remediation")
            .await
            .expect("get");
        assert_eq!(
            paused_value(map).as_deref(),
            Some("incident 4711"),
            "{name}"
        );
    }
    let event = op.firing();
    let report = op.cluster("use1").invoke(LatencyRestart, &[], &event).await;
    assert_skipped_saying(only(&report), "paused for the whole cluster");
    assert_skipped_saying(only(&report), "incident 4711");
    let listed = op
        .run(&["--all-contexts", "paused", "-o", "json"])
        .await
        .json();
    let scopes: Vec<(&str, &str)> = listed["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            (
                i["context"].as_str().unwrap_or(""),
                i["holds"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        scopes,
        vec![
            ("use1", "paused: incident 4711"),
            ("usw2", "paused: incident 4711")
        ]
    );
    op.run(&["--all-contexts", "resume", "--cluster"])
        .await
        .out();
    for name in ["use1", "usw2"] {
        let map = switch(op.cluster(name))
            .get_opt("mesh-remediation")
            .await
            .expect("get");
        assert_eq!(paused_value(map), None, "{name}: the switch is off");
    }

    // A namespace in one cluster, an object in the other.
    op.run(&[
        "--context",
        "use1",
        "pause",
        "-n",
        &ns,
        "--reason",
        "change freeze",
    ])
    .await
    .out();
    op.run(&[
        "--context",
        "usw2",
        "pause",
        "deployment/checkout-v2",
        "-n",
        &ns,
        "--reason",
        "canary under study",
    ])
    .await
    .out();
    let namespace = |name: &str| Api::<Namespace>::all(op.cluster(name).client.clone());
    let key = "auto-remediation.io/paused";
    let stored = namespace("use1").get(&ns).await.expect("namespace");
    assert_eq!(
        annotation(&stored.metadata, key).as_deref(),
        Some("change freeze")
    );
    let stored = namespace("usw2").get(&ns).await.expect("namespace");
    assert_eq!(
        annotation(&stored.metadata, key),
        None,
        "usw2's namespace runs"
    );
    let deployment = op.cluster("usw2").deployment(TARGET).await;
    assert_eq!(
        annotation(&deployment.metadata, key).as_deref(),
        Some("canary under study")
    );
    let table = op.run(&["--all-contexts", "paused"]).await;
    let rows: Vec<Vec<&str>> = table
        .out()
        .lines()
        .map(|l| {
            l.split("   ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect();
    let scope = format!("namespace {ns}");
    let object = format!("Deployment {ns}/{TARGET}");
    assert!(
        rows.contains(&vec!["use1", scope.as_str(), "paused: change freeze"]),
        "{table:#?}"
    );
    assert!(
        rows.contains(&vec!["usw2", object.as_str(), "paused: canary under study"]),
        "{table:#?}"
    );
    let report = op.cluster("usw2").invoke(LatencyRestart, &[], &event).await;
    assert_skipped_saying(only(&report), "paused for Deployment");

    op.run(&["--context", "use1", "resume", "-n", &ns])
        .await
        .out();
    op.run(&[
        "--context",
        "usw2",
        "resume",
        "deploy/checkout-v2",
        "-n",
        &ns,
    ])
    .await
    .out();
    let stored = namespace("use1").get(&ns).await.expect("namespace");
    assert_eq!(annotation(&stored.metadata, key), None);
    let deployment = op.cluster("usw2").deployment(TARGET).await;
    assert_eq!(annotation(&deployment.metadata, key), None);
    assert_eq!(
        op.run(&["--all-contexts", "paused"]).await.out(),
        "No pauses: the functions may act everywhere they are opted in.\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revert_over_every_context_restores_where_the_object_is_and_skips_the_others() {
    let op = Operated::start("op-revert-all").await;
    let ns = op.fleet.namespace.clone();
    let use1 = op.cluster("use1");
    let before = operator::rolled_back_checkout(use1).await;
    let args = [
        "--all-contexts",
        "revert",
        "vs/checkout",
        "-n",
        &ns,
        "--apply",
        "-o",
        "json",
    ];
    let reverted = op.run(&args).await.json();
    let outcomes: Vec<(&str, &str)> = reverted["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            let outcome = i["outcome"]["outcome"].as_str().unwrap_or("");
            (i["context"].as_str().unwrap_or(""), outcome)
        })
        .collect();
    assert_eq!(
        outcomes,
        vec![("use1", "applied"), ("usw2", "skipped")],
        "{reverted:#}"
    );
    let after = Mesh::new(use1).get(Kind::VirtualService, "checkout").await;
    assert_eq!(spec_text(&after), spec_text(&before), "byte for byte");
}
