//! Reports, metrics, sinks, trace ids and drills, through the built bootstrap under the
//! Lambda emulator, with SNS on the local AWS emulator (moto) and Slack / PagerDuty as
//! local HTTP listeners.

use std::time::Duration;

use remediation_testkit::http_capture::CaptureServer;
use remediation_testkit::lambda_emulator::{Emulator, binary, function_binary};
use remediation_testkit::moto::Moto;
use remediation_testkit::{TestCluster, events};
use serde_json::{Value, json};

const SLACK_SECRET: &str = "T000/B000/s3cr3t-slack-path";
const PD_SECRET: &str = "pd-s3cr3t-routing-key";

struct World {
    cluster: TestCluster,
    moto: Moto,
    all_reports: String,
    pages: String,
    slack: CaptureServer,
    pagerduty: CaptureServer,
    emulator: Emulator,
}

async fn world(slack_status: u16) -> World {
    let cluster = TestCluster::start("obs").await;
    cluster.create_deployment("checkout-v2", true).await;
    let moto = Moto::start().await;
    let reports_topic = moto.create_topic("mesh-remediation-reports").await;
    let all_reports = moto
        .subscribe_queue(&reports_topic, "all-reports", None)
        .await;
    // A subscriber that pages only on failed or escalated remediations.
    let pages = moto
        .subscribe_queue(
            &reports_topic,
            "pages",
            Some(&json!({"outcome": ["failed", "escalated"]})),
        )
        .await;
    let slack = CaptureServer::start(slack_status).await;
    let pagerduty = CaptureServer::start(202).await;
    let kubeconfig = cluster.kubeconfig_path().to_string_lossy().into_owned();
    let slack_url = format!("{}/services/{SLACK_SECRET}", slack.url);
    let pd_url = format!("{}/v2/enqueue", pagerduty.url);
    let mut env: Vec<(&str, String)> = moto.env();
    env.extend([
        ("KUBECONFIG", kubeconfig),
        ("DRY_RUN", "false".to_owned()),
        ("RUST_LOG", "debug".to_owned()),
        ("BUDGET_NAMESPACE", cluster.namespace.clone()),
        ("NOTIFY_TOPIC_ARN", reports_topic.clone()),
        ("SLACK_WEBHOOK_URL", slack_url),
        ("PAGERDUTY_ROUTING_KEY", PD_SECRET.to_owned()),
        ("PAGERDUTY_EVENTS_URL", pd_url),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let emulator = Emulator::start(&function_binary("latency-restart"), &env).await;
    World {
        cluster,
        moto,
        all_reports,
        pages,
        slack,
        pagerduty,
        emulator,
    }
}

impl World {
    /// Invokes the function with a sample event, retargeted at this world's namespace.
    async fn invoke_sample(&self, sample: &str) -> (u16, Value) {
        self.emulator
            .invoke(&events::fresh(sample, &self.cluster.namespace))
            .await
    }
}

fn report_of(envelope: &Value) -> Value {
    serde_json::from_str(envelope["Message"].as_str().expect("SNS envelope message"))
        .expect("report JSON")
}

fn attribute<'a>(envelope: &'a Value, name: &str) -> &'a str {
    envelope["MessageAttributes"][name]["Value"]
        .as_str()
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_is_reported_everywhere_with_one_trace_id() {
    let w = world(200).await;
    let (status, response) = w.invoke_sample("latency-restart-firing.json").await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["outcomes"][0]["outcome"], "applied", "{response}");
    let trace_id = response["trace_id"].as_str().expect("trace id").to_owned();
    // SNS and Slack hear of it; PagerDuty has nothing to page or resolve, so is not called.
    let sinks: Vec<&str> = response["notifications"]
        .as_array()
        .expect("notifications")
        .iter()
        .filter(|d| d["ok"] == true)
        .filter_map(|d| d["sink"].as_str())
        .collect();
    assert_eq!(sinks, ["sns", "slack"], "{response}");

    // SNS report: JSON body, short ASCII subject, filterable attributes.
    let envelopes = w.moto.receive(&w.all_reports, Duration::from_secs(5)).await;
    assert_eq!(envelopes.len(), 1, "{envelopes:#?}");
    let envelope = &envelopes[0];
    let subject = envelope["Subject"].as_str().expect("subject");
    assert!(subject.len() <= 100 && subject.is_ascii(), "{subject}");
    assert!(
        subject.contains("latency-restart") && subject.contains("1 applied"),
        "{subject}"
    );
    assert_eq!(attribute(envelope, "outcome"), "applied");
    assert_eq!(attribute(envelope, "remediation"), "latency-restart");
    assert_eq!(attribute(envelope, "severity"), "critical");
    assert_eq!(attribute(envelope, "drill"), "false");
    let report = report_of(envelope);
    assert_eq!(report["trace_id"], trace_id.as_str());
    let outcome = &report["outcomes"][0];
    assert_eq!(outcome["outcome"], "applied");
    assert_eq!(
        outcome["target"],
        format!("Deployment {}/checkout-v2", w.cluster.namespace)
    );
    assert!(
        outcome["change"]
            .as_str()
            .is_some_and(|c| c.starts_with("rollout restart"))
    );
    assert!(
        outcome["patch"]["spec"]["template"].is_object(),
        "exact change in the report"
    );
    let sample = events::message(&events::raw("latency-restart-firing.json"));
    assert_eq!(
        outcome["links"]["prometheus"],
        sample["alerts"][0]["generatorURL"]
    );
    assert!(
        outcome["links"]["prometheus"]
            .as_str()
            .is_some_and(|l| l.contains("istio_request_duration_milliseconds_bucket"))
    );
    assert_eq!(outcome["links"]["alertmanager"], sample["externalURL"]);
    assert_eq!(
        outcome["links"]["runbook"],
        sample["alerts"][0]["annotations"]["runbook_url"]
    );
    // The paging subscriber is not bothered by a successful action.
    assert!(
        w.moto
            .receive(&w.pages, Duration::from_millis(500))
            .await
            .is_empty()
    );

    // Slack got one message with the trace id; PagerDuty nothing (nothing failed).
    let slack = w.slack.received();
    assert_eq!(slack.len(), 1);
    let text = slack[0].body["text"].as_str().expect("slack text");
    assert!(
        text.contains(&trace_id) && text.contains("applied"),
        "{text}"
    );
    assert!(w.pagerduty.received().is_empty());

    // The same trace id on the object's record and its Kubernetes Event.
    let deployment = w.cluster.deployment("checkout-v2").await;
    let record =
        deployment.metadata.annotations.unwrap_or_default()["auto-remediation.io/latency-restart"]
            .clone();
    assert!(record.contains(&trace_id), "{record}");
    let events = w.cluster.events_about("checkout-v2").await;
    assert!(
        events[0]["note"]
            .as_str()
            .is_some_and(|n| n.contains(&trace_id))
    );
    assert_eq!(
        events[0]["metadata"]["annotations"]["auto-remediation.io/trace-id"],
        trace_id.as_str()
    );

    // Logs: the outcome line and EMF metric lines, all with the trace id.
    let logs = w.emulator.json_logs();
    let outcome_line = logs
        .iter()
        .find(|l| l["outcome"] == "applied")
        .expect("outcome log line");
    assert_eq!(outcome_line["trace_id"], trace_id.as_str());
    // Every line logged inside a pipeline stage carries the stage's span, with the trace id.
    assert_eq!(outcome_line["span"]["name"], "report", "{outcome_line}");
    assert_eq!(outcome_line["span"]["trace_id"], trace_id.as_str());
    let mut staged = 0;
    for line in &logs {
        let spans = line["spans"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        for id in spans.iter().filter_map(|span| span.get("trace_id")) {
            assert_eq!(id, trace_id.as_str(), "{line}");
            staged += 1;
        }
    }
    assert!(staged > 1, "lines inside the stages carry the trace id");
    let emf: Vec<&Value> = logs.iter().filter(|l| l["_aws"].is_object()).collect();
    let count = emf
        .iter()
        .find(|l| l["Remediations"].is_number())
        .expect("EMF count line");
    assert_eq!(
        count["_aws"]["CloudWatchMetrics"][0]["Namespace"],
        "MeshRemediation"
    );
    assert_eq!(count["Function"], "latency-restart");
    assert_eq!(count["Outcome"], "applied");
    assert_eq!(count["Remediations"], 1);
    assert_eq!(count["trace_id"], trace_id.as_str());
    let latency = emf
        .iter()
        .find(|l| l["ActionLatency"].is_number())
        .expect("EMF latency line");
    assert_eq!(
        latency["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Unit"],
        "Milliseconds"
    );

    // No secret anywhere.
    let everything = format!("{}{response}{envelopes:?}{text}", w.emulator.logs());
    for secret in [SLACK_SECRET, PD_SECRET] {
        assert!(!everything.contains(secret), "{secret} leaked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_sink_neither_blocks_nor_undoes_the_remediation_and_failures_page() {
    let w = world(500).await;
    let (status, response) = w.invoke_sample("latency-restart-firing.json").await;
    assert_eq!(status, 200);
    assert_eq!(response["outcomes"][0]["outcome"], "applied", "{response}");
    let slack = response["notifications"]
        .as_array()
        .expect("notifications")
        .iter()
        .find(|d| d["sink"] == "slack")
        .expect("slack delivery");
    assert_eq!(slack["ok"], false);
    assert!(
        slack["error"]
            .as_str()
            .is_some_and(|e| e.contains("HTTP 500")),
        "{slack}"
    );
    assert!(!response.to_string().contains(SLACK_SECRET));
    let logs = w.emulator.logs();
    assert!(
        logs.contains("report delivery failed"),
        "sink failure is itself reported"
    );
    assert!(!logs.contains(SLACK_SECRET));
    assert_eq!(
        w.cluster
            .deployment("checkout-v2")
            .await
            .metadata
            .generation,
        Some(2),
        "remediation stands"
    );

    // A failed remediation pages: PagerDuty event deduplicated on the fingerprint, and the
    // SNS subscriber that filters on failed/escalated receives the report.
    let bad = events::fresh(
        "latency-restart-bad-missing-deployment.json",
        &w.cluster.namespace,
    );
    let (_, response) = w.emulator.invoke(&bad).await;
    assert_eq!(response["outcomes"][0]["outcome"], "failed", "{response}");
    let pages = w.pagerduty.received();
    assert_eq!(pages.len(), 1, "{pages:#?}");
    let event = &pages[0].body;
    assert_eq!(event["event_action"], "trigger");
    assert_eq!(event["routing_key"], PD_SECRET);
    assert_eq!(
        event["dedup_key"],
        format!("latency-restart:{}", events::fingerprint(&bad))
    );
    assert_eq!(event["payload"]["severity"], "critical");
    assert!(
        event["payload"]["summary"]
            .as_str()
            .is_some_and(|s| s.contains("no `deployment` label"))
    );
    assert!(event["payload"]["custom_details"]["trace_id"].is_string());
    let paged = w.moto.receive(&w.pages, Duration::from_secs(5)).await;
    assert_eq!(paged.len(), 1);
    assert_eq!(attribute(&paged[0], "outcome"), "failed");
}

/// A queue standing in for `function`, subscribed to the alerts topic with the filter on
/// the `remediation` attribute that the deployed function's subscription has.
async fn function_queue(moto: &Moto, topic: &str, function: &str) -> String {
    let filter = json!({"remediation": [function]});
    moto.subscribe_queue(topic, function, Some(&filter)).await
}

/// Hands a drill's SNS `envelope` from the alerts `topic` to the function as Lambda would,
/// and asserts its one outcome is `kind` with a reason that `says` accepts.
async fn assert_delivered_drill(
    emulator: &Emulator,
    topic: &str,
    envelope: &Value,
    kind: &str,
    says: impl Fn(&str) -> bool,
) {
    let event = json!({"Records": [{"EventSource": "aws:sns", "EventVersion": "1.0",
        "EventSubscriptionArn": format!("{topic}:sub"), "Sns": envelope}]});
    let (_, response) = emulator.invoke(&event).await;
    let outcome = &response["outcomes"][0];
    assert_eq!(outcome["outcome"], kind, "{response}");
    assert!(outcome["reason"].as_str().is_some_and(says), "{outcome}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_runs_end_to_end_on_the_local_emulators() {
    let cluster = TestCluster::start("drill").await;
    let before = cluster.create_deployment("checkout-v2", true).await;
    let moto = Moto::start().await;
    let alerts = moto.create_topic("mesh-remediation-alerts").await;
    let routed = function_queue(&moto, &alerts, "latency-restart").await;
    let elsewhere = function_queue(&moto, &alerts, "error-rollback").await;

    let drill = binary("mesh-remediation", "drill");
    let run_drill = |target: &str| {
        let mut command = std::process::Command::new(&drill);
        command.args([
            "latency-restart",
            "--topic",
            &alerts,
            "--namespace",
            &cluster.namespace,
            "--deployment",
            target,
        ]);
        for (k, v) in moto.env() {
            command.env(k, v);
        }
        let output = command.output().expect("run drill");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert!(run_drill("checkout-v2").contains("MessageId"));
    let delivered = moto.receive(&routed, Duration::from_secs(5)).await;
    assert_eq!(delivered.len(), 1, "routed to latency-restart");
    assert!(
        moto.receive(&elsewhere, Duration::from_millis(300))
            .await
            .is_empty(),
        "and to no other function"
    );

    let kubeconfig = cluster.kubeconfig_path().to_string_lossy().into_owned();
    let emulator = Emulator::start(
        &function_binary("latency-restart"),
        &[("KUBECONFIG", kubeconfig.as_str()), ("DRY_RUN", "false")],
    )
    .await;
    assert_delivered_drill(&emulator, &alerts, &delivered[0], "dry-run", |reason| {
        reason.starts_with("drill passed: routed to latency-restart")
    })
    .await;
    let after = cluster.deployment("checkout-v2").await;
    assert_eq!(
        after.metadata.resource_version, before.metadata.resource_version,
        "a drill changes nothing"
    );

    // A drill against a target that does not exist fails, and says why.
    run_drill("no-such-deployment");
    let delivered = moto.receive(&routed, Duration::from_secs(5)).await;
    assert_delivered_drill(&emulator, &alerts, &delivered[0], "failed", |reason| {
        reason.starts_with("drill failed:") && reason.contains("not found")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_alert_is_reported_so_nobody_forgets_the_pause() {
    let w = world(200).await;
    let deployments = w.cluster.deployments();
    deployments
        .patch(
            "checkout-v2",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({"metadata": {"annotations": {"auto-remediation.io/paused": "load test"}}}),
            ),
        )
        .await
        .expect("pause");
    let (status, response) = w.invoke_sample("latency-restart-firing.json").await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["outcomes"][0]["outcome"], "skipped", "{response}");
    assert!(
        response["outcomes"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("paused: ") && r.contains("load test")),
        "{response}"
    );
    let envelopes = w.moto.receive(&w.all_reports, Duration::from_secs(5)).await;
    assert_eq!(envelopes.len(), 1, "{envelopes:#?}");
    assert_eq!(attribute(&envelopes[0], "outcome"), "skipped");
    // Skips do not page.
    let pages = w.moto.receive(&w.pages, Duration::from_secs(1)).await;
    assert!(pages.is_empty(), "{pages:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_resolves_the_incident_a_failure_opened() {
    let w = world(200).await;
    let deployments = w.cluster.deployments();
    deployments
        .delete("checkout-v2", &Default::default())
        .await
        .expect("delete");
    // The Deployment is gone: the firing alert fails and pages.
    let (_, response) = w.invoke_sample("latency-restart-firing.json").await;
    assert_eq!(response["outcomes"][0]["outcome"], "failed", "{response}");
    // Back, and the alert resolves: the same incident is resolved.
    w.cluster.create_deployment("checkout-v2", true).await;
    let (_, response) = w.invoke_sample("latency-restart-resolved.json").await;
    assert_eq!(response["outcomes"][0]["outcome"], "skipped", "{response}");
    let pages = w.pagerduty.received();
    let actions: Vec<&str> = pages
        .iter()
        .map(|p| p.body["event_action"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(actions, ["trigger", "resolve"], "{pages:#?}");
    assert_eq!(pages[0].body["dedup_key"], pages[1].body["dedup_key"]);
    assert_eq!(pages[1].body["routing_key"], PD_SECRET);
    // Routine skips stay out of Slack and SNS.
    let slack = w.slack.received();
    assert_eq!(slack.len(), 1, "only the failure: {slack:#?}");
}
