//! Sink credentials from Secrets Manager (moto), under the Lambda emulator: read when a
//! report first needs them, kept for the execution environment, never shown; a missing
//! secret is a failed delivery that names it.

use std::time::Duration;

use remediation_testkit::http_capture::CaptureServer;
use remediation_testkit::lambda_emulator::{Emulator, function_binary};
use remediation_testkit::moto::{Moto, between};
use remediation_testkit::{TestCluster, events};
use serde_json::{Value, json};

use super::{PAGERDUTY_KEY, SLACK_PATH, assert_no_secret};

/// What the function logs when it reads a sink's secret (the ARN, never the value).
const READ_LINE: &str = "sink credential read from Secrets Manager";

/// The function with moto as its AWS, the test cluster, dry run (unless `extra` sets
/// `DRY_RUN`) and trace logging.
pub(super) async fn function(
    moto: &Moto,
    cluster: &TestCluster,
    extra: &[(&str, String)],
) -> Emulator {
    let mut env: Vec<(&str, String)> = moto.env();
    if !extra.iter().any(|(k, _)| *k == "DRY_RUN") {
        env.push(("DRY_RUN", "true".into()));
    }
    env.extend([
        (
            "KUBECONFIG",
            cluster.kubeconfig_path().to_string_lossy().into_owned(),
        ),
        ("RUST_LOG", "trace".into()),
        ("BUDGET_NAMESPACE", cluster.namespace.clone()),
    ]);
    env.extend(extra.iter().cloned());
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Emulator::start(&function_binary("latency-restart"), &env).await
}

pub(super) fn delivery<'a>(answer: &'a Value, sink: &str) -> &'a Value {
    answer["notifications"]
        .as_array()
        .and_then(|all| all.iter().find(|d| d["sink"] == sink))
        .unwrap_or_else(|| panic!("no {sink} delivery in {answer}"))
}

/// Invokes the function with a firing alert; returns the Slack delivery's error. The
/// remediation stands (a dry run); only the delivery failed.
async fn failed_slack_delivery(emulator: &Emulator, cluster: &TestCluster) -> String {
    let firing = events::fresh("latency-restart-firing.json", &cluster.namespace);
    let (status, answer) = emulator.invoke(&firing).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["outcomes"][0]["outcome"], "dry-run", "{answer}");
    let slack = delivery(&answer, "slack");
    assert_eq!(slack["ok"], false, "{answer}");
    slack["error"].as_str().expect("error text").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_credentials_are_read_from_secrets_manager_once_per_execution_environment() {
    let cluster = TestCluster::start("secrets-stored").await;
    cluster.create_deployment("checkout-v2", true).await;
    let moto = Moto::start().await;
    let sinks = CaptureServer::start(200).await;
    let slack = moto
        .create_secret(
            "mesh/slack-webhook",
            &format!("{}/services/{SLACK_PATH}\n", sinks.url),
        )
        .await;
    let pagerduty = moto.create_secret("mesh/pagerduty", PAGERDUTY_KEY).await;
    let topic = moto.create_topic("mesh-remediation-reports").await;
    let queue = moto.subscribe_queue(&topic, "reports-by-email", None).await;
    let emulator = function(
        &moto,
        &cluster,
        &[
            ("NOTIFY_TOPIC_ARN", topic.clone()),
            ("SLACK_WEBHOOK_SECRET_ARN", slack.clone()),
            ("PAGERDUTY_ROUTING_KEY_SECRET_ARN", pagerduty.clone()),
            ("PAGERDUTY_EVENTS_URL", format!("{}/v2/enqueue", sinks.url)),
        ],
    )
    .await;
    let firing = events::fresh("latency-restart-firing.json", &cluster.namespace);
    let mut answers = Vec::new();
    for delivery_number in 0..3 {
        let (status, answer) = emulator.invoke(&firing).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["outcomes"][0]["outcome"], "dry-run", "{answer}");
        assert_eq!(
            delivery(&answer, "slack")["ok"],
            true,
            "delivery {delivery_number}: {answer}\n{}",
            emulator.logs()
        );
        if delivery_number == 0 {
            // Gone from the store: this execution environment keeps what it read.
            moto.secretsmanager(
                "DeleteSecret",
                json!({"SecretId": slack, "ForceDeleteWithoutRecovery": true}),
            )
            .await;
        }
        answers.push(answer);
    }
    // A resolved alert resolves its PagerDuty incident: the first use of that secret.
    let resolved = events::fresh("latency-restart-resolved.json", &cluster.namespace);
    let (_, answer) = emulator.invoke(&resolved).await;
    assert_eq!(delivery(&answer, "pagerduty")["ok"], true, "{answer}");
    answers.push(answer);

    let reads: Vec<Value> = emulator
        .json_logs()
        .into_iter()
        .filter(|line| line["message"] == READ_LINE)
        .map(|line| line["secret"].clone())
        .collect();
    assert_eq!(
        reads,
        [json!(slack), json!(pagerduty)],
        "one read per secret"
    );
    let received = sinks.received();
    let slack_posts = received
        .iter()
        .filter(|r| r.request_line == format!("POST /services/{SLACK_PATH}"))
        .count();
    assert_eq!(slack_posts, 3, "{received:#?}");
    let pages: Vec<&Value> = received
        .iter()
        .filter(|r| r.request_line == "POST /v2/enqueue")
        .map(|r| &r.body)
        .collect();
    assert!(
        !pages.is_empty() && pages.iter().all(|p| p["routing_key"] == PAGERDUTY_KEY),
        "PagerDuty gets the stored key: {pages:#?}"
    );
    // E-mail, SQS and Lambda subscribers still get the report JSON (the `default` variant).
    let envelopes = moto.receive(&queue, Duration::from_secs(10)).await;
    let report: Value = envelopes
        .first()
        .and_then(|e| e["Message"].as_str())
        .and_then(|m| serde_json::from_str(m).ok())
        .unwrap_or_else(|| panic!("a report on the queue: {envelopes:#?}"));
    assert_eq!(report["function"], "latency-restart", "{report}");

    let secrets = [SLACK_PATH, PAGERDUTY_KEY];
    assert_no_secret("the function's logs", &emulator.logs(), &secrets);
    for answer in &answers {
        assert_no_secret("the response", &answer.to_string(), &secrets);
    }
    for envelope in &envelopes {
        assert_no_secret("the published report", &envelope.to_string(), &secrets);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_secret_is_a_failed_delivery_that_names_it() {
    let cluster = TestCluster::start("secrets-missing").await;
    cluster.create_deployment("checkout-v2", true).await;
    let moto = Moto::start().await;
    let absent = "arn:aws:secretsmanager:us-east-1:123456789012:secret:mesh/absent-AbCdEf";
    let emulator = function(
        &moto,
        &cluster,
        &[("SLACK_WEBHOOK_SECRET_ARN", absent.to_owned())],
    )
    .await;
    let error = failed_slack_delivery(&emulator, &cluster).await;
    assert!(
        error.starts_with(&format!("secret {absent}: not found")),
        "{error}"
    );
    let warned = emulator
        .json_logs()
        .into_iter()
        .any(|line| line["level"] == "WARN" && line["error"] == error.as_str());
    assert!(warned, "the failure is logged: {}", emulator.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_the_role_may_not_read_is_a_failed_delivery_saying_access_denied() {
    let cluster = TestCluster::start("secrets-denied").await;
    cluster.create_deployment("checkout-v2", true).await;
    // Three free calls: the secret, a user, its key. The function's call is the fourth, and
    // is denied (moto answers it in XML without an error type; AWS with
    // AccessDeniedException: the function reads either as the denial it is).
    let moto = Moto::start_enforcing_iam_after(3).await;
    let arn = moto
        .create_secret("mesh/slack-webhook", "https://hooks.example/x")
        .await;
    moto.query(
        "iam",
        &[("Action", "CreateUser"), ("UserName", "latency-restart")],
    )
    .await;
    let key = moto
        .query(
            "iam",
            &[
                ("Action", "CreateAccessKey"),
                ("UserName", "latency-restart"),
            ],
        )
        .await;
    let access_key = between(&key, "<AccessKeyId>", "</AccessKeyId>").to_owned();
    let secret_key = between(&key, "<SecretAccessKey>", "</SecretAccessKey>").to_owned();
    let kubeconfig = cluster.kubeconfig_path().to_string_lossy().into_owned();
    let emulator = Emulator::start(
        &function_binary("latency-restart"),
        &[
            ("AWS_ENDPOINT_URL", moto.url.as_str()),
            ("AWS_ACCESS_KEY_ID", access_key.as_str()),
            ("AWS_SECRET_ACCESS_KEY", secret_key.as_str()),
            ("KUBECONFIG", kubeconfig.as_str()),
            ("DRY_RUN", "true"),
            ("BUDGET_NAMESPACE", cluster.namespace.as_str()),
            ("SLACK_WEBHOOK_SECRET_ARN", arn.as_str()),
        ],
    )
    .await;
    let error = failed_slack_delivery(&emulator, &cluster).await;
    assert!(
        error.starts_with(&format!("secret {arn}: access denied")),
        "{error}\n{}",
        emulator.logs()
    );
    assert!(!error.contains(&secret_key), "{error}");
}
