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
//! carries its chat form beside the JSON (`chat`).

#[path = "secrets/chat.rs"]
mod chat;
#[path = "secrets/stored.rs"]
mod stored;

use std::sync::{Arc, Mutex};

use base64::Engine as _;
use kube::Api;
use remediation_testkit::fault_proxy::{Credentials, Fault, Token};
use remediation_testkit::lambda_emulator::{Emulator, function_binary};
use remediation_testkit::{TestCluster, events};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

const SECRET_KEY: &str = "SecretAccessKey-7f3c9e1a5b2d4f6e8a0c";
const SESSION_TOKEN: &str = "SessionToken-4d2b8f6a0e1c3b5d7f9a";
const KUBE_TOKEN: &str = "kubeconfig-bearer-token-9e8d7c6b5a4f";
const SLACK_PATH: &str = "T0SECRET/B0SECRET/slack-webhook-secret-path";
const PAGERDUTY_KEY: &str = "pagerduty-routing-key-secret-0a1b2c";

/// A self-signed CA certificate (public test data): the EKS cluster CA the local
/// DescribeCluster answer carries. The proxy itself is plain http.
const TEST_CA: &str = include_str!("../fixtures/test-ca.pem");

/// One request to the local AWS / webhook endpoint.
#[derive(Debug, Clone)]
struct Received {
    request_line: String,
    head: String,
    body: String,
}

/// A local endpoint for everything the function calls besides Kubernetes: EKS
/// DescribeCluster (pointing at the fault proxy), SNS Publish, Slack and PagerDuty.
struct LocalAws {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl LocalAws {
    async fn start(kubernetes_url: String) -> LocalAws {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let sink = received.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let sink = sink.clone();
                let kubernetes_url = kubernetes_url.clone();
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    let mut chunk = [0u8; 16384];
                    let (head, body) = loop {
                        let Ok(n) = stream.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buffer.extend_from_slice(&chunk[..n]);
                        let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
                        let length = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if buffer.len() >= end + 4 + length {
                            let body = String::from_utf8_lossy(&buffer[end + 4..end + 4 + length])
                                .into_owned();
                            break (head, body);
                        }
                    };
                    let request_line = head.lines().next().unwrap_or_default().to_owned();
                    let (content_type, answer) = if request_line.starts_with("GET /clusters/") {
                        let ca = base64::engine::general_purpose::STANDARD.encode(TEST_CA);
                        (
                            "application/json",
                            json!({"cluster": {
                                "name": "demo", "status": "ACTIVE",
                                "endpoint": kubernetes_url,
                                "certificateAuthority": {"data": ca},
                            }})
                            .to_string(),
                        )
                    } else if body.contains("Action=Publish") {
                        (
                            "text/xml",
                            "<PublishResponse xmlns=\"http://sns.amazonaws.com/doc/2010-03-31/\"><PublishResult><MessageId>0e5e4a54-5c5e-4b0e-9a33-2d0c1c0a8f11</MessageId></PublishResult><ResponseMetadata><RequestId>r-1</RequestId></ResponseMetadata></PublishResponse>".to_owned(),
                        )
                    } else {
                        ("application/json", "{}".to_owned())
                    };
                    sink.lock().expect("lock").push(Received {
                        request_line,
                        head,
                        body,
                    });
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                        answer.len()
                    );
                    let _ = stream.write_all(reply.as_bytes()).await;
                });
            }
        });
        LocalAws {
            url,
            received,
            task,
        }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }
}

impl Drop for LocalAws {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The forms a secret could leak in: as is, URL-encoded, and base64 / base64url encoded.
fn leak_forms(secret: &str) -> Vec<String> {
    let encoded: String = form_urlencode(secret);
    vec![
        secret.to_owned(),
        encoded,
        base64::engine::general_purpose::STANDARD.encode(secret),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret),
    ]
}

fn form_urlencode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
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
    let aws = LocalAws::start(cluster.faults().url()).await;
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
    let published: Vec<&Received> = received
        .iter()
        .filter(|r| r.body.contains("Action=Publish"))
        .collect();
    assert!(
        !published.is_empty(),
        "a report was published: {received:#?}"
    );
    for request in &published {
        chat::assert_chat_variant(&request.body);
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
        assert_no_secret("the published report", &request.body, &secrets);
    }
    // The webhook bodies carry the report, not the secrets (the PagerDuty key is the
    // event's routing key by design, so only the others are checked there).
    for request in received
        .iter()
        .filter(|r| r.request_line.starts_with("POST /services/"))
    {
        assert_no_secret(
            "the Slack message",
            &request.body,
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
