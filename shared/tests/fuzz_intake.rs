//! Property-based fuzzing of the intake: SNS event -> Alertmanager payload -> labels.
//!
//! Seeded with the real Alertmanager captures (`tests/data/alertmanager/`) and the sample
//! events (`events/`), the properties feed arbitrary bytes, arbitrary JSON and mutations of
//! the real inputs (byte flips, truncation at any point, hostile label values) through
//! `parse_event`, `validate_alert`, `LatencyRestart::locate` and the whole pipeline, and
//! check that:
//! - nothing panics and every input gets a result (every alert exactly one outcome);
//! - every error is a clear, bounded string without raw control characters;
//! - a message cut short is never accepted;
//! - a label value that is not a valid Kubernetes name never reaches the Kubernetes API.
//!
//! The case count is proptest's default (256 per property); `PROPTEST_CASES=20000` runs
//! a longer campaign.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

use futures::future::BoxFuture;
use mesh_remediation::cluster::connect::KubeConnector;
use mesh_remediation::config::Config;
use mesh_remediation::intake::names;
use mesh_remediation::intake::{self, Delivery, Rejection};
use mesh_remediation::pipeline::{Invocation, Pipeline};
use mesh_remediation::remediation::{LatencyRestart, Remediation};
use proptest::prelude::*;
use serde_json::{Value, json};

/// The longest error message a report may carry for one alert.
const MAX_REASON_CHARS: usize = 2000;

// ------------------------------------------------------------------ seeds

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|err| panic!("{path}: {err}"))
}

/// Every capture and sample event, as stored (text).
fn seed_files() -> Vec<(String, String)> {
    static FILES: LazyLock<Vec<(String, String)>> = LazyLock::new(read_seed_files);
    FILES.clone()
}

fn read_seed_files() -> Vec<(String, String)> {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut files = Vec::new();
    for dir in [
        format!("{root}/tests/data/alertmanager"),
        format!("{root}/../events"),
    ] {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|err| panic!("{dir}: {err}"))
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        entries.sort();
        for path in entries {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            files.push((name, read(&path.to_string_lossy())));
        }
    }
    assert!(files.len() >= 20, "seed corpus is missing: {files:?}");
    files
}

/// Every SNS `Message` string found in the seeds, plus the bare webhook payloads.
fn seed_messages() -> Vec<String> {
    static MESSAGES: LazyLock<Vec<String>> = LazyLock::new(read_seed_messages);
    MESSAGES.clone()
}

fn read_seed_messages() -> Vec<String> {
    fn collect(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("Message", Value::String(s)) => out.push(s.clone()),
                        _ => collect(v, out),
                    }
                }
                if map.contains_key("alerts") && map.contains_key("version") {
                    out.push(value.to_string());
                }
            }
            Value::Array(items) => items.iter().for_each(|v| collect(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for (name, text) in seed_files() {
        if let Ok(value) = serde_json::from_str::<Value>(&text) {
            collect(&value, &mut out);
        } else {
            panic!("seed {name} is not JSON");
        }
    }
    assert!(out.len() >= 20, "too few seed messages: {}", out.len());
    out
}

/// Seed messages that hold a valid alert group with at least one alert.
fn seed_groups() -> Vec<Value> {
    seed_messages()
        .iter()
        .filter(|m| {
            intake::parse_message(m)
                .map(|g| !g.alerts.is_empty())
                .unwrap_or(false)
        })
        .map(|m| serde_json::from_str(m).expect("valid message is JSON"))
        .collect()
}

/// A Lambda SNS event with one record carrying `message`.
fn sns_event(message: &str, topic: &str) -> Value {
    json!({"Records": [{
        "EventSource": "aws:sns",
        "EventVersion": "1.0",
        "EventSubscriptionArn": format!("{topic}:0d8a3b41-5b7e-4f6c-9f8e-2a1c3d4e5f60"),
        "Sns": {
            "Type": "Notification",
            "MessageId": "6b1f5c3e-2d0a-4c1e-9a57-8f1e0d4b7a21",
            "TopicArn": topic,
            "Subject": "[FIRING:1] IstioHighLatencyP95",
            "Message": message,
            "Timestamp": "2026-01-01T00:00:00.000Z",
            "SignatureVersion": "1",
            "Signature": "",
            "SigningCertUrl": "",
            "UnsubscribeUrl": "",
            "MessageAttributes": {"remediation": {"Type": "String", "Value": "latency-restart"}}
        }
    }]})
}

const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:mesh-remediation-alerts";

// ------------------------------------------------------------------ checks

/// A clear error: not empty, bounded, no raw control characters (a hostile value must not
/// be able to forge log lines or terminal output through an error message).
fn assert_clear(context: &str, message: &str) {
    assert!(!message.trim().is_empty(), "{context}: empty error");
    assert!(
        message.chars().count() <= MAX_REASON_CHARS,
        "{context}: error of {} characters: {}…",
        message.chars().count(),
        message.chars().take(200).collect::<String>()
    );
    assert!(
        !message.chars().any(char::is_control),
        "{context}: raw control character in error: {message:?}"
    );
}

fn rejection_text(rejection: &Rejection) -> &str {
    match rejection {
        Rejection::Invalid(why) | Rejection::OtherFunction(why) => why,
    }
}

/// Runs the intake on an event and checks every result; returns the deliveries.
fn check_event(event: &Value, expected_topic: Option<&str>) -> Option<Vec<Delivery>> {
    let deliveries = match intake::parse_event(event, expected_topic) {
        Ok(deliveries) => deliveries,
        Err(err) => {
            assert!(!err.is_retryable(), "bad input is never retryable: {err}");
            assert_clear("parse_event", &err.to_string());
            return None;
        }
    };
    assert!(!deliveries.is_empty(), "an accepted event has deliveries");
    for delivery in &deliveries {
        match &delivery.content {
            Err(err) => {
                assert!(!err.is_retryable(), "bad input is never retryable: {err}");
                assert_clear("delivery", &err.to_string());
            }
            Ok(group) => {
                for alert in &group.alerts {
                    check_alert(alert);
                }
            }
        }
    }
    Some(deliveries)
}

/// `validate_alert` and `locate` never panic; what they accept is a valid name.
fn check_alert(alert: &mesh_remediation::intake::alert::Alert) {
    let config = config();
    for function in intake::KNOWN_REMEDIATIONS {
        match intake::validate_alert(alert, function) {
            Err(rejection) => assert_clear("validate_alert", rejection_text(&rejection)),
            Ok(input) => {
                assert!(
                    names::dns_label("namespace", &input.namespace).is_ok(),
                    "accepted namespace {:?}",
                    input.namespace
                );
                if function == LatencyRestart.name() {
                    match LatencyRestart.locate(&input, &config) {
                        Err(why) => assert_clear("locate", &why),
                        Ok(locator) => {
                            let name = locator.name.expect("latency-restart names its target");
                            assert!(
                                names::dns_subdomain("deployment", &name).is_ok(),
                                "accepted deployment {name:?}"
                            );
                        }
                    }
                }
            }
        }
    }
}

fn config() -> Config {
    Config::from_lookup(|var| match var {
        "DRY_RUN" => Some("false".into()),
        "MAX_DELIVERY_AGE_SECONDS" => Some("0".into()),
        _ => None,
    })
    .expect("valid configuration")
}

/// A Kubernetes connection that counts how often the pipeline asked for it and never
/// reaches a cluster.
#[derive(Default)]
struct CountingConnector(AtomicUsize);

impl KubeConnector for CountingConnector {
    fn client(&self) -> BoxFuture<'_, mesh_remediation::Result<kube::Client>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(async {
            Err(mesh_remediation::Error::Connect(
                "no cluster in the intake fuzz tests".into(),
            ))
        })
    }
}

/// How many outcomes the pipeline owes for this event: one per alert, one per unreadable
/// record, one per group with omitted alerts, one per empty group, one for an unreadable event.
fn expected_outcomes(event: &Value, deliveries: Option<&[Delivery]>) -> usize {
    if intake::parse_revert(event, None).is_some() {
        // A revert request is one piece of work, answered with one outcome.
        return 1;
    }
    let Some(deliveries) = deliveries else {
        return 1;
    };
    deliveries
        .iter()
        .map(|d| match &d.content {
            Err(_) => 1,
            Ok(group) => {
                group.alerts.len()
                    + usize::from(group.truncated_alerts > 0)
                    + usize::from(group.alerts.is_empty() && group.truncated_alerts == 0)
            }
        })
        .sum()
}

/// The whole pipeline on `event`: one outcome per alert, every reason clear. Returns how
/// many times it asked for a Kubernetes client.
fn check_pipeline(event: &Value, deliveries: Option<&[Delivery]>) -> usize {
    let connector = Arc::new(CountingConnector::default());
    let pipeline = Pipeline::new(config(), LatencyRestart, connector.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let invocation = Invocation::new("fuzz", None, None);
    let report = runtime.block_on(pipeline.handle(event, &invocation));
    assert_eq!(
        report.outcomes.len(),
        expected_outcomes(event, deliveries),
        "every alert gets exactly one outcome: {report:#?}"
    );
    for outcome in &report.outcomes {
        if let Some(reason) = &outcome.reason {
            assert_clear("outcome reason", reason);
        }
        for field in [&outcome.source.alert, &outcome.source.fingerprint]
            .into_iter()
            .flatten()
        {
            assert!(!field.chars().any(char::is_control), "{field:?}");
        }
    }
    serde_json::to_string(&report).expect("the report serialises");
    connector.0.load(Ordering::SeqCst)
}

// ------------------------------------------------------------------ strategies

/// Strings an attacker (or a careless relabel rule) could put in a label.
fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("..".to_owned()),
        Just("../../kube-system".to_owned()),
        Just("/".to_owned()),
        Just("shop/../kube-system".to_owned()),
        Just("Shop".to_owned()),
        Just("CHECKOUT-V2".to_owned()),
        Just("a".repeat(300)),
        Just("x".repeat(64)),
        Just("shop\n{\"outcome\":\"applied\"}".to_owned()),
        Just("shop\r\nX-Injected: 1".to_owned()),
        Just("shop\u{0}".to_owned()),
        Just("\u{1b}[31mred\u{1b}[0m".to_owned()),
        Just("shop\u{202e}".to_owned()),
        Just("%2e%2e%2f".to_owned()),
        Just("shop?dryRun=None".to_owned()),
        Just("shop#x".to_owned()),
        Just(" shop".to_owned()),
        Just("-shop".to_owned()),
        Just("shop.".to_owned()),
        Just("ünïcode".to_owned()),
        "\\PC{0,40}",
        "[\\x00-\\x1f\\x7f-\\u{9f}a-z./]{0,80}",
        any::<String>(),
    ]
}

/// Arbitrary JSON, with keys biased towards the ones the intake looks at so that deep
/// paths are reached.
fn arbitrary_json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("Records".to_owned()),
        Just("Sns".to_owned()),
        Just("Message".to_owned()),
        Just("MessageId".to_owned()),
        Just("TopicArn".to_owned()),
        Just("Timestamp".to_owned()),
        Just("Type".to_owned()),
        Just("MessageAttributes".to_owned()),
        Just("truncated".to_owned()),
        Just("version".to_owned()),
        Just("alerts".to_owned()),
        Just("status".to_owned()),
        Just("labels".to_owned()),
        Just("startsAt".to_owned()),
        Just("endsAt".to_owned()),
        Just("fingerprint".to_owned()),
        Just("truncatedAlerts".to_owned()),
        Just("revert".to_owned()),
        Just("remediation".to_owned()),
        Just("namespace".to_owned()),
        Just("name".to_owned()),
        Just("kind".to_owned()),
        Just("reason".to_owned()),
        "[a-zA-Z]{0,12}",
        any::<String>(),
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        Just(json!("4")),
        Just(json!("Notification")),
        Just(json!("firing")),
        Just(json!("resolved")),
        Just(json!("2026-01-01T00:00:00Z")),
        Just(json!("0001-01-01T00:00:00Z")),
        hostile_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A revert request (direct invocation) with arbitrary fields and values.
fn shaped_revert() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("remediation".to_owned()),
        Just("namespace".to_owned()),
        Just("kind".to_owned()),
        Just("name".to_owned()),
        Just("reason".to_owned()),
        Just("traceId".to_owned()),
        Just("requestedBy".to_owned()),
        Just("dryRun".to_owned()),
        Just("cluster".to_owned()),
        hostile_string(),
    ];
    let value = prop_oneof![
        4 => hostile_string().prop_map(Value::String),
        1 => Just(json!("latency-restart")),
        1 => Just(json!("Deployment")),
        1 => any::<bool>().prop_map(Value::Bool),
        1 => Just(Value::Null),
    ];
    prop::collection::btree_map(key, value, 0..10)
        .prop_map(|m| json!({"revert": Value::Object(m.into_iter().collect())}))
}

/// A webhook-v4 payload whose structure is right and whose field values are arbitrary.
fn shaped_group() -> impl Strategy<Value = Value> {
    let field = prop_oneof![
        3 => hostile_string().prop_map(Value::String),
        1 => any::<i64>().prop_map(Value::from),
        1 => Just(Value::Null),
        1 => Just(json!({"nested": [1, 2]})),
    ];
    let labels = prop::collection::btree_map(
        prop_oneof![
            Just("remediation".to_owned()),
            Just("namespace".to_owned()),
            Just("deployment".to_owned()),
            Just("alertname".to_owned()),
            Just("dry_run".to_owned()),
            Just("drill".to_owned()),
            Just("cluster".to_owned()),
            any::<String>(),
        ],
        prop_oneof![
            4 => hostile_string().prop_map(Value::String),
            1 => Just(json!("latency-restart")),
            1 => Just(json!(7)),
        ],
        0..8,
    );
    let status = prop_oneof![
        Just(json!("firing")),
        Just(json!("resolved")),
        field.clone()
    ];
    let time = prop_oneof![
        Just(json!("2026-01-01T00:00:00Z")),
        Just(json!("0001-01-01T00:00:00Z")),
        Just(json!("9999-12-31T23:59:59Z")),
        field.clone(),
    ];
    let alert = (
        status.clone(),
        labels,
        time.clone(),
        time,
        field.clone(),
        any::<bool>(),
    )
        .prop_map(|(status, labels, starts, ends, fingerprint, drop_fp)| {
            let mut alert = json!({
                "status": status,
                "labels": Value::Object(labels.into_iter().collect()),
                "annotations": {},
                "startsAt": starts,
                "endsAt": ends,
                "fingerprint": fingerprint,
            });
            if drop_fp && let Some(map) = alert.as_object_mut() {
                map.remove("fingerprint");
            }
            alert
        });
    (
        prop_oneof![Just(json!("4")), field.clone()],
        status,
        prop::collection::vec(alert, 0..4),
        prop_oneof![Just(json!(0)), Just(json!(3)), field],
    )
        .prop_map(|(version, status, alerts, truncated)| {
            json!({
                "version": version,
                "status": status,
                "receiver": "mesh-remediation",
                "truncatedAlerts": truncated,
                "alerts": alerts,
            })
        })
}

fn fuzz_config() -> ProptestConfig {
    // `ProptestConfig::default()` honours PROPTEST_CASES (default 256). Failures found
    // are saved next to this file and replayed first on every later run.
    ProptestConfig {
        max_shrink_iters: 2048,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct(
                "tests/fuzz_intake.proptest-regressions",
            ),
        )),
        ..ProptestConfig::default()
    }
}

// ------------------------------------------------------------------ properties

proptest! {
    #![proptest_config(fuzz_config())]

    /// Arbitrary bytes as a whole Lambda event (when they parse as JSON at all) and as the
    /// SNS message text: an answer, never a panic.
    #[test]
    fn arbitrary_bytes_get_an_answer(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok(event) = serde_json::from_slice::<Value>(&bytes) {
            let deliveries = check_event(&event, None);
            check_pipeline(&event, deliveries.as_deref());
        }
        let text = String::from_utf8_lossy(&bytes);
        match intake::parse_message(&text) {
            Err(err) => assert_clear("parse_message", &err.to_string()),
            Ok(group) => group.alerts.iter().for_each(check_alert),
        }
        let event = sns_event(&text, TOPIC);
        let deliveries = check_event(&event, Some(TOPIC)).expect("a well-formed SNS event");
        prop_assert_eq!(deliveries.len(), 1);
        check_pipeline(&event, Some(&deliveries));
    }

    /// Arbitrary JSON as the event, and as the SNS message.
    #[test]
    fn arbitrary_json_gets_an_answer(value in arbitrary_json()) {
        let deliveries = check_event(&value, None);
        check_pipeline(&value, deliveries.as_deref());
        let event = sns_event(&value.to_string(), TOPIC);
        let deliveries = check_event(&event, None).expect("a well-formed SNS event");
        check_pipeline(&event, Some(&deliveries));
    }

    /// Right shape, arbitrary values: every alert gets exactly one outcome and no hostile
    /// value reaches the API (the connector is asked for only when every name is valid).
    #[test]
    fn shaped_payloads_with_arbitrary_values(group in shaped_group()) {
        let event = sns_event(&group.to_string(), TOPIC);
        let deliveries = check_event(&event, None).expect("a well-formed SNS event");
        let asked = check_pipeline(&event, Some(&deliveries));
        let valid_targets = deliveries[0].content.as_ref().map_or(0, |g| {
            g.alerts
                .iter()
                .filter(|a| {
                    intake::validate_alert(a, "latency-restart").is_ok_and(|input| {
                        LatencyRestart.locate(&input, &config()).is_ok()
                    })
                })
                .count()
        });
        prop_assert!(asked <= valid_targets, "asked for the API {asked} times with {valid_targets} valid targets");
    }

    /// Byte flips anywhere in a real capture or sample event (the whole event text).
    #[test]
    fn byte_flips_in_real_events(
        seed in prop::sample::select(seed_files()),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..8),
    ) {
        let mut bytes = seed.1.into_bytes();
        for (index, mask) in flips {
            let at = index.index(bytes.len());
            bytes[at] ^= mask;
        }
        if let Ok(event) = serde_json::from_slice::<Value>(&bytes) {
            let deliveries = check_event(&event, None);
            check_pipeline(&event, deliveries.as_deref());
        }
    }

    /// Byte flips inside a real SNS message (the Alertmanager JSON itself).
    #[test]
    fn byte_flips_in_real_messages(
        message in prop::sample::select(seed_messages()),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..8),
    ) {
        let mut bytes = message.into_bytes();
        for (index, mask) in flips {
            let at = index.index(bytes.len());
            bytes[at] ^= mask;
        }
        let text = String::from_utf8_lossy(&bytes);
        let event = sns_event(&text, TOPIC);
        let deliveries = check_event(&event, None).expect("a well-formed SNS event");
        check_pipeline(&event, Some(&deliveries));
    }

    /// A real message cut at any byte (as Alertmanager's 256 KiB cut does, possibly inside
    /// a UTF-8 character) is never accepted, and the error says it ended early.
    #[test]
    fn truncation_at_any_point_is_never_accepted(
        message in prop::sample::select(seed_messages()).prop_filter("JSON messages", |m| m.trim_start().starts_with('{')),
        cut in any::<prop::sample::Index>(),
    ) {
        let complete = message.trim_end().len();
        let at = cut.index(complete);
        let text = String::from_utf8_lossy(&message.as_bytes()[..at]).into_owned();
        let event = sns_event(&text, TOPIC);
        let deliveries = check_event(&event, None).expect("a well-formed SNS event");
        let err = deliveries[0].content.as_ref().expect_err("a cut message is never accepted");
        let err = err.to_string();
        prop_assert!(
            err.contains("ends early") || err.contains("is empty"),
            "cut at {} of {}: {}", at, complete, err
        );
        check_pipeline(&event, Some(&deliveries));
    }

    /// Hostile values in the labels of real alerts: rejected with a clear error before any
    /// API request when they become names, harmless otherwise.
    #[test]
    fn hostile_label_values_in_real_alerts(
        group in prop::sample::select(seed_groups()),
        which in any::<prop::sample::Index>(),
        key in prop_oneof![
            Just("namespace"), Just("deployment"), Just("remediation"), Just("alertname"),
            Just("cluster"), Just("dry_run"), Just("drill"), Just("service"), Just("version"),
        ],
        value in hostile_string(),
    ) {
        let mut group = group;
        let alerts = group["alerts"].as_array_mut().expect("alerts");
        let at = which.index(alerts.len());
        let mut alert = alerts[at].take();
        alert["labels"]["remediation"] = json!("latency-restart");
        alert["labels"][key] = json!(value);
        alert["fingerprint"] = json!(format!("fp\u{1}{value}"));
        group["alerts"] = json!([alert]);
        let event = sns_event(&group.to_string(), TOPIC);
        let deliveries = check_event(&event, None).expect("a well-formed SNS event");
        let parsed = deliveries[0].content.as_ref().expect("still a valid payload");
        let verdict = intake::validate_alert(&parsed.alerts[0], "latency-restart");
        let name_ok = match key {
            "namespace" => names::dns_label("namespace", &value).is_ok(),
            "deployment" => names::dns_subdomain("deployment", &value).is_ok(),
            _ => true,
        };
        if !name_ok {
            let rejected = match &verdict {
                Err(Rejection::Invalid(_)) => true,
                Ok(input) => LatencyRestart.locate(input, &config()).is_err(),
                Err(Rejection::OtherFunction(_)) => false,
            };
            prop_assert!(rejected, "{key}={value:?} accepted: {verdict:?}");
            prop_assert_eq!(check_pipeline(&event, Some(&deliveries)), 0, "{}={:?} reached the API", key, value);
        } else {
            check_pipeline(&event, Some(&deliveries));
        }
    }

    /// Revert requests with arbitrary fields, directly and through SNS: one clear outcome.
    #[test]
    fn shaped_revert_requests(request in shaped_revert()) {
        check_pipeline(&request, None);
        let event = sns_event(&request.to_string(), TOPIC);
        let deliveries = check_event(&event, None);
        check_pipeline(&event, deliveries.as_deref());
    }

    /// The topic check holds for any topic string, and its error is clear.
    #[test]
    fn records_from_other_topics_are_rejected(topic in hostile_string()) {
        let message = seed_messages().into_iter().next().expect("a seed");
        let event = sns_event(&message, &topic);
        let deliveries = check_event(&event, Some(TOPIC)).expect("a well-formed SNS event");
        if topic != TOPIC {
            let err = deliveries[0].content.as_ref().expect_err("other topic rejected").to_string();
            prop_assert!(err.contains("ALERT_TOPIC_ARN"), "{}", err);
        }
    }
}

#[test]
fn the_seed_corpus_is_the_real_one() {
    let messages = seed_messages();
    let groups = seed_groups();
    assert!(
        groups.len() >= 10,
        "{} of {} seed messages are valid groups",
        groups.len(),
        messages.len()
    );
    for (name, text) in seed_files() {
        let event: Value = serde_json::from_str(&text).expect("seed is JSON");
        // The publish-request captures are what Alertmanager sent to SNS, not events.
        if !name.starts_with("publish-request") {
            let deliveries = check_event(&event, None);
            check_pipeline(&event, deliveries.as_deref());
        }
    }
}
