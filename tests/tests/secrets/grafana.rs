//! Grafana annotations for every change, under the Lambda emulator with the token in
//! Secrets Manager (moto). There is no Grafana here (its licence keeps it out of this
//! project's test tools): a capture server stands in for its HTTP API, and the requests are
//! checked against what Grafana documents for `POST /api/annotations` (a JSON body with
//! `text`, `tags`, `time` in epoch milliseconds, an optional `dashboardUID`; a service
//! account token as a bearer token).

use chrono::Utc;
use remediation_testkit::http_capture::CaptureServer;
use remediation_testkit::moto::Moto;
use remediation_testkit::{TestCluster, events};
use serde_json::{Value, json};

use super::assert_no_secret;
use super::stored::{delivery, function};

const GRAFANA_TOKEN: &str = "glsa_grafanaSecretToken_0f1e2d3c";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_is_an_annotation_made_with_the_stored_token_and_a_dry_run_none() {
    let cluster = TestCluster::start("grafana-annotations").await;
    cluster.create_deployment("checkout-v2", true).await;
    let moto = Moto::start().await;
    let grafana = CaptureServer::start(200).await;
    let token = moto.create_secret("mesh/grafana", GRAFANA_TOKEN).await;
    let settings = |dry_run: &str| {
        vec![
            ("DRY_RUN", dry_run.to_owned()),
            ("GRAFANA_URL", format!("{}/", grafana.url)),
            ("GRAFANA_TOKEN_SECRET_ARN", token.clone()),
            ("GRAFANA_DASHBOARD_UID", "mesh-remediation".to_owned()),
        ]
    };

    // A dry run changes nothing, so nothing is marked.
    let dry = function(&moto, &cluster, &settings("true")).await;
    let firing = events::fresh("latency-restart-firing.json", &cluster.namespace);
    let (status, answer) = dry.invoke(&firing).await;
    assert_eq!(
        (status, &answer["outcomes"][0]["outcome"]),
        (200, &json!("dry-run")),
        "{answer}"
    );
    assert!(grafana.received().is_empty(), "{:#?}", grafana.received());

    let live = function(&moto, &cluster, &settings("false")).await;
    let before = Utc::now().timestamp_millis();
    let (status, answer) = live.invoke(&firing).await;
    let after = Utc::now().timestamp_millis();
    assert_eq!(
        (status, &answer["outcomes"][0]["outcome"]),
        (200, &json!("applied")),
        "{answer}"
    );
    assert_eq!(
        delivery(&answer, "grafana")["ok"],
        true,
        "{answer}\n{}",
        live.logs()
    );
    let restarted = cluster.deployment("checkout-v2").await;
    let stamp = restarted.spec.and_then(|s| {
        s.template
            .metadata?
            .annotations?
            .remove("kubectl.kubernetes.io/restartedAt")
    });
    assert!(stamp.is_some(), "the change is stored");

    let received = grafana.received();
    assert_eq!(received.len(), 1, "{received:#?}");
    let request = &received[0];
    assert_eq!(request.request_line, "POST /api/annotations");
    let head = request.head.to_ascii_lowercase();
    assert!(
        head.contains(&format!(
            "authorization: bearer {}",
            GRAFANA_TOKEN.to_ascii_lowercase()
        )),
        "{}",
        request.head
    );
    assert!(
        head.contains("content-type: application/json"),
        "{}",
        request.head
    );
    let body = &request.body;
    let time = body["time"].as_i64().expect("time in epoch milliseconds");
    assert!(
        (before..=after).contains(&time),
        "{time} not within {before}..{after}"
    );
    assert_eq!(body["dashboardUID"], "mesh-remediation");
    let tags: Vec<&str> = body["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let namespace_tag = format!("namespace:{}", cluster.namespace);
    assert_eq!(
        tags,
        [
            "mesh-remediation",
            "latency-restart",
            "applied",
            namespace_tag.as_str()
        ]
    );
    let text = body["text"].as_str().expect("text");
    let target = format!("Deployment {}/checkout-v2", cluster.namespace);
    let trace = answer["trace_id"].as_str().expect("trace id");
    assert!(
        text.starts_with(&format!("latency-restart applied {target}: ")),
        "{text}"
    );
    assert!(text.ends_with(&format!("; trace {trace}")), "{text}");

    let secrets = [GRAFANA_TOKEN];
    assert_no_secret("the function's logs", &live.logs(), &secrets);
    assert_no_secret("the response", &answer.to_string(), &secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_a_failed_delivery_and_the_change_stands() {
    let cluster = TestCluster::start("grafana-refused").await;
    cluster.create_deployment("checkout-v2", true).await;
    let moto = Moto::start().await;
    let grafana = CaptureServer::start(401).await;
    let emulator = function(
        &moto,
        &cluster,
        &[
            ("DRY_RUN", "false".to_owned()),
            ("GRAFANA_URL", grafana.url.clone()),
            ("GRAFANA_TOKEN", GRAFANA_TOKEN.to_owned()),
        ],
    )
    .await;
    let firing = events::fresh("latency-restart-firing.json", &cluster.namespace);
    let (status, answer) = emulator.invoke(&firing).await;
    assert_eq!(
        (status, &answer["outcomes"][0]["outcome"]),
        (200, &json!("applied")),
        "{answer}"
    );
    let grafana_delivery = delivery(&answer, "grafana");
    assert_eq!(grafana_delivery["ok"], false, "{answer}");
    assert_eq!(grafana_delivery["error"], "grafana: HTTP 401", "{answer}");
    let received = grafana.received();
    assert_eq!(received.len(), 1, "{received:#?}");
    assert!(
        received[0].body.get("dashboardUID").is_none(),
        "organization annotation: {:#?}",
        received[0].body
    );
    assert_no_secret("the function's logs", &emulator.logs(), &[GRAFANA_TOKEN]);
}
