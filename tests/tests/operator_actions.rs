//! `kubectl mesh-remediation` on one real control plane (behind the test's fault proxy):
//! budgets, revert, hand-offs, drills, errors and help. Each assertion reads what the
//! cluster stores, or what the function then does.

use chrono::{Duration, Utc};
use mesh_remediation::pipeline::Invocation;
use mesh_remediation::remediation::{ErrorRollback, LatencyRestart};
use mesh_remediation::report::OutcomeKind;
use remediation_testkit::lambda_emulator::{Emulator, function_binary};
use remediation_testkit::mesh::{Kind, Mesh, only, record, spec_text};
use remediation_testkit::moto::Moto;
use remediation_testkit::operator::{self, Run};
use remediation_testkit::{TestCluster, events};
use serde_json::{Value, json};

const TARGET: &str = "checkout-v2";
const FIRING: &str = "latency-restart-firing.json";

async fn plugin(cluster: &TestCluster, args: &[&str]) -> Run {
    plugin_as(cluster.kubeconfig_path(), args, &[]).await
}

/// The plugin with another identity's kubeconfig, or an environment of its own.
async fn plugin_as(kubeconfig: &std::path::Path, args: &[&str], env: &[(&str, String)]) -> Run {
    operator::run(&operator::binary(), kubeconfig, args, env).await
}

/// A latency-restart drill for the target in `ns`, sent `via` (`--topic`, `--invoke`) `to`.
fn drill<'a>(ns: &'a str, via: &'a str, to: &'a str) -> [&'a str; 8] {
    let function = "latency-restart";
    ["drill", function, "-n", ns, "--deployment", TARGET, via, to]
}

/// Where a drill is published: moto with the alert topic, and latency-restart's queue
/// subscribed to it with the function's filter (the topic's ARN, the queue's URL).
async fn drill_topic() -> (Moto, String, String) {
    let moto = Moto::start().await;
    let topic = moto.create_topic("alerts").await;
    let filter = json!({"remediation": ["latency-restart"]});
    let queue = moto
        .subscribe_queue(&topic, "latency-restart", Some(&filter))
        .await;
    (moto, topic, queue)
}

/// The one message delivered to `queue` within `seconds` (`what` names it in a failure).
async fn the_delivery(moto: &Moto, queue: &str, seconds: u64, what: &str) -> Value {
    let delivered = moto
        .receive(queue, std::time::Duration::from_secs(seconds))
        .await;
    assert_eq!(delivered.len(), 1, "{what}: {delivered:#?}");
    delivered.into_iter().next().expect("one message")
}

/// The built latency-restart function under the Lambda emulator, acting on `cluster` with
/// its own group's kubeconfig.
async fn restart_function(cluster: &TestCluster) -> Emulator {
    let kubeconfig = cluster
        .function_kubeconfig_path("latency-restart")
        .to_string_lossy()
        .into_owned();
    Emulator::start(
        &function_binary("latency-restart"),
        &[
            ("KUBECONFIG", kubeconfig.as_str()),
            ("DRY_RUN", "false"),
            ("BUDGET_NAMESPACE", cluster.namespace.as_str()),
        ],
    )
    .await
}

async fn restarted(cluster: &TestCluster) {
    cluster.create_deployment(TARGET, true).await;
    let event = events::fresh(FIRING, &cluster.namespace);
    let report = cluster.invoke(LatencyRestart, &[], &event).await;
    assert_eq!(only(&report).outcome, OutcomeKind::Applied, "{report:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_shows_the_spending_and_reset_gives_a_function_its_budget_back() {
    let cluster = TestCluster::start("op-budget").await;
    restarted(&cluster).await;
    let ns = cluster.namespace.as_str();
    let spent = plugin(
        &cluster,
        &["budget", "--budget-namespace", ns, "-o", "json"],
    )
    .await
    .json();
    let used = |json: &serde_json::Value, budget: &str| {
        json["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["budget"] == budget)
            .map(|i| (i["used"].as_u64(), i["limit"].as_u64()))
    };
    assert_eq!(used(&spent, "latency-restart"), Some((Some(1), Some(20))));
    assert_eq!(used(&spent, "(cluster)"), Some((Some(1), Some(40))));
    let table = plugin(&cluster, &["budget", "--budget-namespace", ns]).await;
    assert!(
        table
            .out()
            .starts_with("CONTEXT   BUDGET             USED   LIMIT   NEXT SLOT FREES AT\n"),
        "{table:#?}"
    );

    let reset = plugin(
        &cluster,
        &[
            "budget",
            "reset",
            "latency-restart",
            "--budget-namespace",
            ns,
        ],
    )
    .await;
    assert_eq!(
        reset.out(),
        "[proxied] budget of latency-restart reset: its changes no longer count\n"
    );
    let configmaps =
        kube::Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(cluster.client.clone(), ns);
    let stored = configmaps
        .get(mesh_remediation::guard::budget::BUDGET_CONFIGMAP)
        .await
        .expect("budget");
    assert_eq!(
        stored
            .data
            .and_then(|d| d.get("latency-restart").cloned())
            .as_deref(),
        Some("[]")
    );
    let after = plugin(
        &cluster,
        &["budget", "--budget-namespace", ns, "-o", "json"],
    )
    .await
    .json();
    assert_eq!(used(&after, "latency-restart"), Some((Some(0), Some(20))));
    let unknown = plugin(
        &cluster,
        &["budget", "reset", "reboot", "--budget-namespace", ns],
    )
    .await;
    unknown.fails_saying("unknown function \"reboot\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revert_is_a_server_side_dry_run_until_apply_and_refuses_after_a_foreign_edit() {
    let cluster = TestCluster::start("op-revert").await;
    let ns = cluster.namespace.as_str();
    let mesh = Mesh::new(&cluster);
    let before = operator::rolled_back_checkout(&cluster).await;
    let firing = events::fresh("error-rollback-firing.json", ns);
    let changed = mesh.get(Kind::VirtualService, "checkout").await;

    let dry = plugin(&cluster, &["revert", "vs/checkout", "-n", ns]).await;
    let text = dry.out();
    assert!(
        text.contains(&format!("VirtualService {ns}/checkout   dry-run")),
        "{dry:#?}"
    );
    assert!(
        text.contains("dry-run patch:"),
        "the patch is shown: {dry:#?}"
    );
    assert_eq!(
        mesh.get(Kind::VirtualService, "checkout").await,
        changed,
        "a dry run stores nothing"
    );

    let done = plugin(
        &cluster,
        &[
            "revert",
            "vs/checkout",
            "-n",
            ns,
            "--apply",
            "--reason",
            "v2 fixed",
        ],
    )
    .await;
    assert!(done.out().contains("applied"), "{done:#?}");
    let reverted = mesh.get(Kind::VirtualService, "checkout").await;
    assert_eq!(spec_text(&reverted), spec_text(&before), "byte for byte");
    let reversal = record(&reverted, "error-rollback")
        .and_then(|r| r.reverted)
        .expect("the revert is recorded");
    assert_eq!(reversal.reason, "v2 fixed");
    let requested_by = reversal.requested_by.as_deref().unwrap_or_default();
    assert!(
        requested_by.ends_with("(kubectl mesh-remediation)"),
        "{reversal:?}"
    );

    // Act again, then someone edits the weights: the revert refuses and the edit stands.
    let vars = [("COOLDOWN_SECONDS", "0"), ("ESCALATE_AFTER", "0")];
    let again = cluster.invoke(ErrorRollback, &vars, &firing).await;
    assert_eq!(only(&again).outcome, OutcomeKind::Applied, "{again:#?}");
    let edit = json!({"http": [{"route": [
        {"destination": {"host": "checkout", "subset": "v1"}, "weight": 90},
        {"destination": {"host": "checkout", "subset": "v2"}, "weight": 10}]}]});
    mesh.edit_spec(Kind::VirtualService, "checkout", edit).await;
    let edited = mesh.get(Kind::VirtualService, "checkout").await;
    let refused = plugin(&cluster, &["revert", "vs/checkout", "-n", ns, "--apply"]).await;
    assert!(
        !refused.ok,
        "a refused revert fails the command: {refused:#?}"
    );
    assert!(refused.stdout.contains("failed"), "{refused:#?}");
    assert!(
        refused.stdout.contains("was edited after the action"),
        "{refused:#?}"
    );
    assert_eq!(mesh.get(Kind::VirtualService, "checkout").await, edited);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalated_lists_the_hand_off_and_ack_hands_it_back() {
    let cluster = TestCluster::start("op-escalated").await;
    cluster.create_deployment(TARGET, true).await;
    let vars = [("ESCALATE_AFTER", "1"), ("COOLDOWN_SECONDS", "60")];
    let mut last = None;
    for minutes_ago in [5, 0] {
        let at = Utc::now() - Duration::minutes(minutes_ago);
        let event = events::fresh_at(FIRING, &cluster.namespace, at);
        let mut invocation = Invocation::new(&format!("req-op-{minutes_ago}"), None, None);
        invocation.now = at;
        last = Some(
            cluster
                .invoke_with(LatencyRestart, &vars, &event, &invocation)
                .await,
        );
        cluster.wait_settled(TARGET).await;
    }
    let report = last.expect("two invocations");
    assert_eq!(only(&report).outcome, OutcomeKind::Escalated, "{report:#?}");

    let ns = cluster.namespace.as_str();
    let listed = plugin(&cluster, &["escalated", "-n", ns, "-o", "json"])
        .await
        .json();
    let item = &listed["items"][0];
    assert_eq!(item["object"], format!("Deployment {ns}/{TARGET}").as_str());
    assert_eq!(item["remediation"], "latency-restart");
    assert_eq!(item["alert"], "IstioHighLatencyP95");
    assert_eq!(item["streak"], 1);
    let status = plugin(&cluster, &["status", "-n", ns, "-o", "json"])
        .await
        .json();
    assert_eq!(status["items"][0]["escalated"], true, "{status:#}");

    let ack = plugin(&cluster, &["ack", "deployment/checkout-v2", "-n", ns]).await;
    assert_eq!(
        ack.out(),
        format!("[proxied] Deployment {ns}/{TARGET} handed back to the functions\n")
    );
    let stored = cluster.deployment(TARGET).await;
    let annotations = stored.metadata.annotations.unwrap_or_default();
    assert!(!annotations.contains_key("auto-remediation.io/escalated"));
    assert_eq!(
        plugin(&cluster, &["escalated", "-n", ns]).await.out(),
        "Nothing is handed off to a person.\n"
    );
    plugin(&cluster, &["ack", "deployment/checkout-v2", "-n", ns])
        .await
        .fails_saying("not escalated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_verb_and_object_refused_and_the_object_without_a_record() {
    let cluster = TestCluster::start("op-errors").await;
    let ns = cluster.namespace.as_str();
    cluster.create_deployment("plain", true).await;
    let as_function = cluster.function_kubeconfig_path("latency-restart");
    plugin_as(as_function, &["pause", "-n", ns, "--reason", "x"], &[])
        .await
        .fails_saying(&format!("forbidden: you may not patch namespace {ns}"));
    for (args, error) in [
        (
            ["revert", "deployment/plain", "-n", ns],
            format!("Deployment {ns}/plain: carries no action record"),
        ),
        (
            ["revert", "deployment/absent", "-n", ns],
            format!("Deployment {ns}/absent not found"),
        ),
        (["ack", "pod/x", "-n", ns], "is not KIND/NAME".to_owned()),
    ] {
        plugin(&cluster, &args).await.fails_saying(&error);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_published_to_the_alert_topic_reaches_the_function_as_a_dry_run() {
    let cluster = TestCluster::start("op-drill").await;
    let before = cluster.create_deployment(TARGET, true).await;
    let (moto, topic, queue) = drill_topic().await;
    let ns = cluster.namespace.as_str();
    let args = drill(ns, "--topic", &topic);
    let sent = plugin_as(cluster.kubeconfig_path(), &args, &moto.env()).await;
    assert!(
        sent.out().starts_with("drill published: MessageId "),
        "{sent:#?}"
    );

    let routed = "routed by the subscription's filter";
    let envelope = the_delivery(&moto, &queue, 10, routed).await;
    assert_eq!(envelope["MessageAttributes"]["drill"]["Value"], "true");
    let report = cluster.invoke(LatencyRestart, &[], &envelope).await;
    let outcome = only(&report);
    assert_eq!(outcome.outcome, OutcomeKind::DryRun, "{report:#?}");
    assert!(outcome.source.drill, "{outcome:#?}");
    assert_eq!(
        cluster.deployment(TARGET).await.spec,
        before.spec,
        "a drill changes nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_published_with_wait_shows_the_outcome_from_the_functions_log_group() {
    let cluster = TestCluster::start("op-drill-wait").await;
    let before = cluster.create_deployment(TARGET, true).await;
    let (moto, topic, queue) = drill_topic().await;
    let emulator = restart_function(&cluster).await;
    let log_group = "/aws/lambda/test-stack-latency-restart";
    let ns = cluster.namespace.as_str();
    let args = [
        &drill(ns, "--topic", &topic)[..],
        &["--wait", "60", "--stack", "test-stack"],
    ]
    .concat();
    let aws = moto.env();
    // The template creates the function's log group with the stack; a wrong one is named.
    moto.deliver_logs(log_group, &[]).await;
    let elsewhere = [&drill(ns, "--topic", &topic)[..], &["--wait", "5"]].concat();
    let wrong = plugin_as(cluster.kubeconfig_path(), &elsewhere, &aws).await;
    wrong.fails_saying(
        "/aws/lambda/mesh-remediation-latency-restart: The specified log group does not exist",
    );
    wrong.fails_saying("check --stack");
    the_delivery(&moto, &queue, 10, "the wrong-stack drill's delivery").await;
    // Lambda's part: the subscription's delivery invoked, the function's output delivered to
    // its log group, while the plugin waits for it there.
    let lambda = async {
        let delivered = the_delivery(&moto, &queue, 20, "the drill's delivery").await;
        let (status, answer) = emulator.invoke(&delivered).await;
        assert_eq!(status, 200, "{answer}");
        let lines: Vec<String> = emulator.json_logs().iter().map(|l| l.to_string()).collect();
        moto.deliver_logs(log_group, &lines).await;
    };
    let (waited, ()) = tokio::join!(plugin_as(cluster.kubeconfig_path(), &args, &aws), lambda);
    let text = waited.out();
    assert!(
        text.starts_with("latency-restart answered the drill drill")
            && text.contains("(MessageId "),
        "{waited:#?}"
    );
    assert!(
        text.contains(&format!(
            "latency-restart   Deployment {ns}/{TARGET}   dry-run"
        )),
        "{waited:#?}"
    );
    assert!(
        text.contains("dry-run patch:"),
        "the patch, parsed back: {waited:#?}"
    );
    assert_eq!(
        cluster.deployment(TARGET).await.spec,
        before.spec,
        "a drill changes nothing"
    );

    // Nothing logged for a message the function never got: a clear failure, in time.
    let args = [
        &drill(ns, "--topic", &topic)[..],
        &["--wait", "3", "--log-group", log_group],
    ]
    .concat();
    let unanswered = plugin_as(cluster.kubeconfig_path(), &args, &moto.env()).await;
    unanswered.fails_saying("no outcome for MessageId");
    assert!(unanswered.error().contains(log_group), "{unanswered:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_invoked_directly_shows_the_functions_outcome() {
    let cluster = TestCluster::start("op-drill-invoke").await;
    cluster.create_deployment(TARGET, true).await;
    let emulator = restart_function(&cluster).await;
    // Lambda's Invoke API, answered by the emulator (as `aws lambda invoke --endpoint-url`).
    let lambda = [
        ("AWS_ENDPOINT_URL", emulator.endpoint_url()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
    ];
    let ns = cluster.namespace.as_str();
    let args = drill(ns, "--invoke", "function");
    let answered = plugin_as(cluster.kubeconfig_path(), &args, &lambda).await;
    let text = answered.out();
    assert!(
        text.starts_with("latency-restart answered the drill drill"),
        "{answered:#?}"
    );
    assert!(
        text.contains(&format!(
            "latency-restart   Deployment {ns}/{TARGET}   dry-run"
        )),
        "{answered:#?}"
    );
    let json = plugin_as(
        cluster.kubeconfig_path(),
        &[&args[..], &["-o", "json"]].concat(),
        &lambda,
    )
    .await
    .json();
    assert_eq!(json["answer"]["outcomes"][0]["drill"], true, "{json:#}");
    assert_eq!(
        json["answer"]["outcomes"][0]["outcome"], "dry-run",
        "{json:#}"
    );
}

#[tokio::test]
async fn every_command_answers_help() {
    let binary = operator::binary();
    let none = std::path::Path::new("/nonexistent/kubeconfig");
    for command in [
        "status",
        "history",
        "escalated",
        "ack",
        "pause",
        "resume",
        "paused",
        "budget",
        "budget reset",
        "revert",
        "drill",
    ] {
        let mut args: Vec<&str> = command.split(' ').collect();
        args.push("--help");
        let help = operator::run(&binary, none, &args, &[]).await;
        assert!(
            help.out()
                .contains(&format!("Usage: kubectl mesh-remediation {command}")),
            "{command}: {help:#?}"
        );
    }
}
