//! Secrets never reach logs, responses, reports or the cluster: the built `latency-restart`
//! bootstrap runs under the Lambda emulator at `RUST_LOG=trace` with recognisable
//! credentials (AWS secret key and session token, the EKS bearer token made from them, a
//! kubeconfig token, a Slack webhook path, a PagerDuty routing key), and none of them may
//! appear in anything it prints, answers, publishes or writes.
//!
//! The EKS path is the production one: `CLUSTER_NAME` set, `eks:DescribeCluster` answered
//! by a local AWS endpoint pointing at the real API server's fault proxy, the bearer token
//! presigned from the session credentials (the proxy accepts it for the function's user, as
//! EKS's authenticator maps an IAM role to its Kubernetes group).
//!
//! In AWS the sink credentials come from Secrets Manager (`stored`); the published report
//! carries its chat form beside the JSON (`chat`); every change is an annotation in Grafana
//! (`grafana`).

#[path = "secrets/chat.rs"]
mod chat;
#[path = "secrets/grafana.rs"]
mod grafana;
#[path = "secrets/stored.rs"]
mod stored;

use base64::Engine as _;
use kube::Api;
use remediation_testkit::fault_proxy::{Credentials, Fault, Token};
use remediation_testkit::http_capture::{Answer, CaptureServer, Captured};
use remediation_testkit::lambda_emulator::{Emulator, function_binary};
use remediation_testkit::moto::form_urlencode;
use remediation_testkit::{TestCluster, events};
use serde_json::json;

const SECRET_KEY: &str = "SecretAccessKey-7f3c9e1a5b2d4f6e8a0c";
const SESSION_TOKEN: &str = "SessionToken-4d2b8f6a0e1c3b5d7f9a";
const KUBE_TOKEN: &str = "kubeconfig-bearer-token-9e8d7c6b5a4f";
const SLACK_PATH: &str = "T0SECRET/B0SECRET/slack-webhook-secret-path";
const PAGERDUTY_KEY: &str = "pagerduty-routing-key-secret-0a1b2c";

/// A self-signed CA certificate (public test data): the EKS cluster CA the local
/// DescribeCluster answer carries. The proxy itself is plain http.
const TEST_CA: &str = include_str!("../fixtures/test-ca.pem");

/// A local endpoint for everything the function calls besides Kubernetes: EKS
/// DescribeCluster (pointing at the fault proxy), SNS Publish, Slack and PagerDuty.
async fn local_aws(kubernetes_url: String) -> CaptureServer {
    CaptureServer::start_answering(move |request| {
        if request.request_line.starts_with("GET /clusters/") {
            let ca = base64::engine::general_purpose::STANDARD.encode(TEST_CA);
            Answer {
                status: 200,
                content_type: "application/json",
                body: json!({"cluster": {
                    "name": "demo", "status": "ACTIVE",
                    "endpoint": kubernetes_url,
                    "certificateAuthority": {"data": ca},
                }})
                .to_string(),
            }
        } else if request.text.contains("Action=Publish") {
            Answer {
                status: 200,
                content_type: "text/xml",
                body: "<PublishResponse xmlns=\"http://sns.amazonaws.com/doc/2010-03-31/\"><PublishResult><MessageId>0e5e4a54-5c5e-4b0e-9a33-2d0c1c0a8f11</MessageId></PublishResult><ResponseMetadata><RequestId>r-1</RequestId></ResponseMetadata></PublishResponse>".to_owned(),
            }
        } else {
            Answer::empty_json(200)
        }
    })
    .await
}

/// The forms a secret could leak in: as is, URL-encoded, and base64 / base64url encoded.
fn leak_forms(secret: &str) -> Vec<String> {
    vec![
        secret.to_owned(),
        form_urlencode(secret),
        base64::engine::general_purpose::STANDARD.encode(secret),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret),
    ]
}

fn assert_no_secret(place: &str, text: &str, secrets: &[&str]) {
    for secret in secrets {
        for form in leak_forms(secret) {
            let lines: Vec<String> = text
                .lines()
                .filter(|l| l.contains(&form))
                .map(|l| l.replace(&form, "<SECRET>").chars().take(600).collect())
                .take(3)
                .collect();
            assert!(
                lines.is_empty(),
                "{place} contains the secret {secret:?} (as {form:?}), e.g.:\n{}",
                lines.join("\n")
            );
        }
    }
    assert!(
        !text.contains("k8s-aws-v1."),
        "{place} contains an EKS bearer token"
    );
}

/// Every request the cluster received (bodies included) and what the test's namespace
/// stores that a function writes: Deployments, Events, ConfigMaps.
async fn cluster_dump(cluster: &TestCluster) -> String {
    let mut out = serde_json::to_string(&cluster.requests()).expect("requests");
    let ns = &cluster.namespace;
    let client = cluster.client.clone();
    let lp = kube::api::ListParams::default();
    let deployments = Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), ns)
        .list(&lp)
        .await
        .expect("deployments");
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), ns)
        .list(&lp)
        .await
        .expect("events");
    let configmaps = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client, ns)
        .list(&lp)
        .await
        .expect("configmaps");
    for stored in [
        serde_json::to_string(&deployments.items),
        serde_json::to_string(&events.items),
        serde_json::to_string(&configmaps.items),
    ] {
        out.push('\n');
        out.push_str(&stored.expect("json"));
    }
    out
}

/// The function's own user on the cluster, for a token the cluster does not know.
fn as_latency_restart(cluster: &TestCluster) -> Credentials {
    Credentials::read(cluster.function_kubeconfig_path("latency-restart"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eks_credentials_and_sink_secrets_never_leave_the_process() {
    let cluster = TestCluster::start("secrets-eks").await;
    cluster
        .faults()
        .accept(Token::Eks, as_latency_restart(&cluster));
    cluster.create_deployment("checkout-v2", true).await;
    let aws = local_aws(cluster.faults().url()).await;
    let slack = format!("{}/services/{SLACK_PATH}", aws.url);
    let pagerduty = format!("{}/v2/enqueue", aws.url);
    let emulator = Emulator::start(
        &function_binary("latency-restart"),
        &[
            ("CLUSTER_NAME", "demo"),
            ("DRY_RUN", "false"),
            ("RUST_LOG", "trace"),
            ("BUDGET_NAMESPACE", cluster.namespace.as_str()),
            ("AWS_ENDPOINT_URL", &aws.url),
            ("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
            ("AWS_SESSION_TOKEN", SESSION_TOKEN),
            (
                "NOTIFY_TOPIC_ARN",
                "arn:aws:sns:us-east-1:123456789012:mesh-remediation-reports",
            ),
            ("SLACK_WEBHOOK_URL", &slack),
            ("PAGERDUTY_ROUTING_KEY", PAGERDUTY_KEY),
            ("PAGERDUTY_EVENTS_URL", &pagerduty),
        ],
    )
    .await;
    let (status, answer) = emulator
        .invoke(&events::fresh(
            "latency-restart-firing.json",
            &cluster.namespace,
        ))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["outcomes"][0]["outcome"],
        "applied",
        "the function reached the cluster through EKS auth: {answer}\n{}",
        emulator.logs()
    );
    // A failure path too: its error text must be as clean.
    let (_, failed) = emulator
        .invoke(&events::fresh("bad-not-json.json", &cluster.namespace))
        .await;

    let received = aws.received();
    assert!(
        received
            .iter()
            .any(|r| r.request_line.starts_with("GET /clusters/demo")),
        "DescribeCluster was called: {received:#?}"
    );
    let published: Vec<&Captured> = received
        .iter()
        .filter(|r| r.text.contains("Action=Publish"))
        .collect();
    assert!(
        !published.is_empty(),
        "a report was published: {received:#?}"
    );
    for request in &published {
        chat::assert_chat_variant(&request.text);
    }
    // The session token is sent where it must be (the signed request), and only there.
    assert!(
        published.iter().any(|r| r.head.contains(SESSION_TOKEN)),
        "the SNS request is signed with the session credentials"
    );
    let logs = emulator.logs();
    assert!(
        logs.lines().count() > 20,
        "trace logging is on, so a leak would show: {logs}"
    );
    let secrets = [SECRET_KEY, SESSION_TOKEN, SLACK_PATH, PAGERDUTY_KEY];
    assert_no_secret("the function's logs", &logs, &secrets);
    assert_no_secret("the response", &answer.to_string(), &secrets);
    assert_no_secret("the failure response", &failed.to_string(), &secrets);
    for request in &published {
        assert_no_secret("the published report", &request.text, &secrets);
    }
    // The webhook bodies carry the report, not the secrets (the PagerDuty key is the
    // event's routing key by design, so only the others are checked there).
    for request in received
        .iter()
        .filter(|r| r.request_line.starts_with("POST /services/"))
    {
        assert_no_secret(
            "the Slack message",
            &request.text,
            &[SECRET_KEY, SESSION_TOKEN, SLACK_PATH],
        );
    }
    assert_no_secret(
        "what the cluster received and stored",
        &cluster_dump(&cluster).await,
        &secrets,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubeconfig_token_never_leaves_the_process() {
    let cluster = TestCluster::start("secrets-kube").await;
    let faults = cluster.faults();
    faults.accept(
        Token::Exact(KUBE_TOKEN.into()),
        as_latency_restart(&cluster),
    );
    cluster.create_deployment("checkout-v2", true).await;
    let kubeconfig = std::env::temp_dir().join(format!("kubeconfig-{}.yaml", cluster.namespace));
    let ours = Credentials {
        token: KUBE_TOKEN.into(),
        ..as_latency_restart(&cluster)
    };
    std::fs::write(
        &kubeconfig,
        ours.kubeconfig_via(&faults.url(), &cluster.namespace),
    )
    .expect("kubeconfig");
    let kubeconfig = kubeconfig.to_string_lossy().into_owned();
    let emulator = Emulator::start(
        &function_binary("latency-restart"),
        &[
            ("KUBECONFIG", kubeconfig.as_str()),
            ("DRY_RUN", "false"),
            ("RUST_LOG", "trace"),
            ("BUDGET_NAMESPACE", cluster.namespace.as_str()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
            ("AWS_SESSION_TOKEN", SESSION_TOKEN),
        ],
    )
    .await;
    let event = events::fresh("latency-restart-firing.json", &cluster.namespace);
    let (_, applied) = emulator.invoke(&event).await;
    assert_eq!(applied["outcomes"][0]["outcome"], "applied", "{applied}");
    // A transient failure: its error goes back to Lambda (and its logs).
    faults.add_fault(Fault::status(500).method("GET"));
    let (_, failed) = emulator.invoke(&event).await;
    assert!(
        failed["errorMessage"]
            .as_str()
            .is_some_and(|m| m.contains("failed transiently")),
        "{failed}"
    );
    let secrets = [KUBE_TOKEN, SECRET_KEY, SESSION_TOKEN];
    assert_no_secret("the function's logs", &emulator.logs(), &secrets);
    assert_no_secret("the response", &applied.to_string(), &secrets);
    assert_no_secret("the error answer", &failed.to_string(), &secrets);
    faults.clear_faults();
    assert_no_secret(
        "what the cluster received and stored",
        &cluster_dump(&cluster).await,
        &secrets,
    );
}
