//! Intake + decision for one Alertmanager message at the size cap of the shipped template.
//!
//! `cargo bench -p mesh-remediation --bench intake` (or `scripts/bench`, which runs it with
//! the other figures). No test harness: it times with `Instant` over many iterations and
//! prints the median and the 95th percentile.
//!
//! The message: the alert of `events/latency-restart-firing.json` (real labels and
//! annotations), repeated for 200 Deployments with distinct fingerprints. The template
//! (`deploy/alertmanager/sns.tmpl`) renders at most 200 alerts and at most 250,000 bytes;
//! the bench fills both caps: 200 alerts, the sample's `generatorURL` shortened just enough
//! for them to fit. Timed per iteration, as one invocation does it: the Lambda runtime's
//! decoding of the event bytes, then the pipeline's intake loop (`intake::parse_event`,
//! `Source::for_alert`, `intake::validate_alert`, `decide::screen`,
//! `Remediation::targets`).
//!
//! Settings: `BENCH_ITERATIONS` (default 300). The last line is
//! `BENCH {json}` for `scripts/bench`.

#![allow(missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use mesh_remediation::config::Config;
use mesh_remediation::guard::decide::{self, Gate};
use mesh_remediation::intake;
use mesh_remediation::remediation::{LatencyRestart, Remediation};
use mesh_remediation::report::Source;
use serde_json::{Value, json};

/// The template's caps (`deploy/alertmanager/sns.tmpl`).
const MAX_ALERTS: usize = 200;
const MAX_MESSAGE_BYTES: usize = 250_000;

fn main() {
    let iterations: usize = std::env::var("BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
        .max(5);
    let published: DateTime<Utc> = "2026-11-25T21:27:50.081Z".parse().expect("timestamp");
    let now = published + chrono::Duration::seconds(30);
    let (event_bytes, message_bytes) = capped_event(published);
    let config = Config::from_lookup(|_| None).expect("default configuration");
    let remediation = LatencyRestart;

    // What the checks below count, once, so the timed loop cannot silently do less.
    let (firing, total) = run_once(&event_bytes, &config, &remediation, now);
    assert_eq!(total, MAX_ALERTS, "every alert must come out of intake");
    assert_eq!(firing, MAX_ALERTS, "every alert must pass screening");

    let (mut decode, mut parse, mut whole) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..iterations + iterations / 10 {
        let started = Instant::now();
        let event: Value = serde_json::from_slice(black_box(&event_bytes)).expect("event JSON");
        let decoded = started.elapsed();
        let deliveries =
            intake::parse_event(&event, config.alert_topic_arn.as_deref()).expect("event");
        let parsed = started.elapsed();
        black_box(decide_all(deliveries, &config, &remediation, now));
        let elapsed = started.elapsed();
        // The first tenth warms caches and the allocator; it is not counted.
        if round >= iterations / 10 {
            decode.push(decoded);
            parse.push(parsed - decoded);
            whole.push(elapsed);
        }
    }
    let decode = Stats::of(decode);
    let parse = Stats::of(parse);
    let whole = Stats::of(whole);
    println!(
        "intake + decision, one Alertmanager message: {MAX_ALERTS} alerts, message {message_bytes} bytes, SNS event {} bytes",
        event_bytes.len()
    );
    for (what, stats) in [
        ("event bytes -> JSON (Lambda runtime)", &decode),
        ("intake::parse_event", &parse),
        ("decode + intake + decision (total)", &whole),
    ] {
        println!(
            "  {what:<38} median {:>7.3} ms  p95 {:>7.3} ms  min {:.3} ms",
            ms(stats.median),
            ms(stats.p95),
            ms(stats.min)
        );
    }
    println!("  ({} iterations)", whole.n);
    println!(
        "BENCH {}",
        json!({
            "figure": "intake_256k",
            "alerts": MAX_ALERTS,
            "message_bytes": message_bytes,
            "event_bytes": event_bytes.len(),
            "iterations": whole.n,
            "median_ms": ms(whole.median),
            "p95_ms": ms(whole.p95),
            "min_ms": ms(whole.min),
            "decode_median_ms": ms(decode.median),
            "parse_event_median_ms": ms(parse.median),
        })
    );
}

/// The per-alert part of the pipeline's intake loop (`Pipeline::intake`), without the
/// report bookkeeping: returns how many alerts passed screening, and how many there were.
fn decide_all(
    deliveries: Vec<intake::Delivery>,
    config: &Config,
    remediation: &LatencyRestart,
    now: DateTime<Utc>,
) -> (usize, usize) {
    let mut firing = 0;
    let mut total = 0;
    for delivery in deliveries {
        let base = Source {
            message_id: delivery.message_id.clone(),
            ..Source::default()
        };
        let group = delivery.content.expect("message");
        for alert in &group.alerts {
            total += 1;
            let mut source = Source::for_alert(&base, alert, group.external_url.as_deref());
            let Ok(input) = intake::validate_alert(alert, remediation.name()) else {
                continue;
            };
            source.namespace = Some(input.namespace.clone());
            let gate = decide::screen(&input, delivery.published_at, &config.policy, now);
            if gate == Gate::Firing && remediation.targets(&input, config).is_ok() {
                firing += 1;
            }
            black_box(source);
        }
    }
    (firing, total)
}

fn run_once(
    bytes: &[u8],
    config: &Config,
    remediation: &LatencyRestart,
    now: DateTime<Utc>,
) -> (usize, usize) {
    let event: Value = serde_json::from_slice(bytes).expect("event JSON");
    let deliveries = intake::parse_event(&event, None).expect("event");
    decide_all(deliveries, config, remediation, now)
}

/// The sample SNS event with its message replaced by a full one: 200 alerts, as large as
/// the template lets a message be. Returns the event's bytes and the message's length.
fn capped_event(published: DateTime<Utc>) -> (Vec<u8>, usize) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../events/latency-restart-firing.json"
    );
    let mut event: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("sample event")).expect("JSON");
    let mut message: Value = serde_json::from_str(
        event["Records"][0]["Sns"]["Message"]
            .as_str()
            .expect("sample message"),
    )
    .expect("sample message JSON");
    let sample = message["alerts"][0].clone();
    let url = sample["generatorURL"]
        .as_str()
        .expect("generatorURL")
        .to_owned();
    let started = (published - chrono::Duration::minutes(5)).to_rfc3339();

    let render = |url_len: usize, message: &mut Value| {
        let alerts: Vec<Value> = (0..MAX_ALERTS)
            .map(|i| {
                let deployment = format!("checkout-{i:03}-v2");
                let mut alert = sample.clone();
                alert["labels"]["deployment"] = json!(deployment);
                alert["labels"]["pod"] = json!(format!("{deployment}-7c9d8f6b5-{:05x}", i * 7919));
                alert["annotations"]["summary"] = json!(format!(
                    "P95 latency {} ms on {deployment} in shop",
                    600 + i
                ));
                alert["startsAt"] = json!(started);
                alert["fingerprint"] =
                    json!(format!("{:016x}", 0x2289_218d_565d_99a5_u64 + i as u64));
                alert["generatorURL"] = json!(cut_url(&url, url_len));
                alert
            })
            .collect();
        message["alerts"] = Value::Array(alerts);
        message.to_string()
    };
    // The longest generatorURL that keeps 200 alerts under the byte cap.
    let (mut fits, mut too_long) = (0, url.len() + 1);
    while too_long - fits > 1 {
        let mid = (fits + too_long) / 2;
        if render(mid, &mut message).len() < MAX_MESSAGE_BYTES {
            fits = mid;
        } else {
            too_long = mid;
        }
    }
    let text = render(fits, &mut message);
    assert!(
        text.len() < MAX_MESSAGE_BYTES && text.len() > MAX_MESSAGE_BYTES - 2_000,
        "message of {} bytes is not at the cap",
        text.len()
    );
    let length = text.len();
    event["Records"][0]["Sns"]["Message"] = Value::String(text);
    event["Records"][0]["Sns"]["Timestamp"] = json!(published.to_rfc3339());
    (serde_json::to_vec(&event).expect("event bytes"), length)
}

/// `url` cut to at most `len` bytes, never inside a `%XX` escape.
fn cut_url(url: &str, len: usize) -> String {
    let mut end = len.min(url.len());
    while end > 0 && (url[..end].ends_with('%') || url[..end.saturating_sub(1)].ends_with('%')) {
        end -= 1;
    }
    url[..end].to_owned()
}

struct Stats {
    n: usize,
    min: Duration,
    median: Duration,
    p95: Duration,
}

impl Stats {
    fn of(mut samples: Vec<Duration>) -> Stats {
        samples.sort();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Stats {
            n: samples.len(),
            min: samples[0],
            median: at(0.5),
            p95: at(0.95),
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
