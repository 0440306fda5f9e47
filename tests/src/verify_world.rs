//! The world a verification runs in: the real Prometheus (the Debian binary) scraping a
//! small exporter whose series the test sets, and the function's verify queue on moto's SQS.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::local_server::{free_port, serve};

/// Each series' value when set, its growth per second, and when it was set.
type Series = Arc<Mutex<BTreeMap<String, (f64, f64, Instant)>>>;

/// A `/metrics` endpoint: each series a value plus a rate per second (a counter grows by
/// it between scrapes; a gauge has rate 0).
#[derive(Clone)]
pub struct Exporter {
    series: Series,
    /// `127.0.0.1:PORT`.
    pub address: String,
}

impl Exporter {
    /// Serves on a free loopback port, one thread, each answer closing its connection.
    pub fn start() -> Exporter {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind exporter");
        let address = listener.local_addr().expect("address").to_string();
        let series: Series = Arc::default();
        let served = series.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                // Without it each reply can wait ~40 ms on Nagle and delayed ACKs.
                let _ = stream.set_nodelay(true);
                let mut request = Vec::new();
                let mut buffer = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                let body = render(&served.lock().expect("series"));
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes());
            }
        });
        Exporter { series, address }
    }

    /// Sets a gauge, e.g. `verify_error_ratio{namespace="shop"}`.
    pub fn set(&self, series: &str, value: f64) {
        self.counter(series, value, 0.0);
    }

    /// Sets a counter to `start` growing by `per_second`.
    pub fn counter(&self, series: &str, start: f64, per_second: f64) {
        let mut all = self.series.lock().expect("series");
        all.insert(series.to_owned(), (start, per_second, Instant::now()));
    }
}

fn render(series: &BTreeMap<String, (f64, f64, Instant)>) -> String {
    series
        .iter()
        .map(|(name, (start, rate, since))| {
            format!("{name} {}\n", start + rate * since.elapsed().as_secs_f64())
        })
        .collect()
}

/// The Debian `prometheus` scraping an [`Exporter`] every second.
pub struct RealPrometheus {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    child: Option<Child>,
    dir: PathBuf,
    http: reqwest::Client,
}

impl RealPrometheus {
    /// Starts Prometheus and waits until it is ready.
    pub async fn start(exporter: &Exporter) -> RealPrometheus {
        let dir = std::env::temp_dir().join(crate::cluster::unique_name("verify-prometheus"));
        std::fs::create_dir_all(&dir).expect("prometheus dir");
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n  - job_name: mesh\n    static_configs: [{{targets: [\"{}\"]}}]\n",
            exporter.address
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("prometheus config");
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log");
        let mut command = Command::new("prometheus");
        command
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stderr(log);
        let what = format!("prometheus (the Debian package; log in {})", dir.display());
        let (child, url) = serve(command, port, "/-/ready", Duration::from_secs(60), &what).await;
        let http = reqwest::Client::new();
        RealPrometheus {
            url,
            child: Some(child),
            dir,
            http,
        }
    }

    /// The value of `query` now, if it has one.
    pub async fn value(&self, query: &str) -> Option<f64> {
        let answer: Value = self
            .http
            .post(format!("{}/api/v1/query", self.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(
                form_urlencoded::Serializer::new(String::new())
                    .append_pair("query", query)
                    .finish(),
            )
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        answer["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
    }

    /// Waits until `query` answers `expected` (its series scraped), up to 30 s.
    pub async fn wait_for(&self, query: &str, expected: f64) {
        let started = Instant::now();
        loop {
            let value = self.value(query).await;
            if value.is_some_and(|v| (v - expected).abs() < 1e-9) {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{query} is {value:?}, never {expected}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `query` has any value.
    pub async fn wait_for_data(&self, query: &str) -> f64 {
        let started = Instant::now();
        loop {
            if let Some(value) = self.value(query).await.filter(|v| !v.is_nan()) {
                return value;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{query} never had data"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops it (Prometheus down).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}

impl Drop for RealPrometheus {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A function's verify queue on moto's SQS.
pub struct VerifyQueue {
    /// The queue URL (`VERIFY_QUEUE_URL`).
    pub url: String,
    endpoint: String,
    http: reqwest::Client,
}

impl VerifyQueue {
    /// Creates the queue `name` on the moto server at `endpoint`.
    pub async fn create(endpoint: &str, name: &str) -> VerifyQueue {
        let http = reqwest::Client::new();
        let queue = VerifyQueue {
            url: String::new(),
            endpoint: endpoint.to_owned(),
            http,
        };
        let created = queue.call("CreateQueue", json!({"QueueName": name})).await;
        VerifyQueue {
            url: created["QueueUrl"].as_str().expect("queue url").to_owned(),
            ..queue
        }
    }

    async fn call(&self, target: &str, body: Value) -> Value {
        let response = self
            .http
            .post(format!("{}/", self.endpoint))
            .header("content-type", "application/x-amz-json-1.0")
            .header("x-amz-target", format!("AmazonSQS.{target}"))
            .header("authorization", "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/sqs/aws4_request, SignedHeaders=host, Signature=0")
            .json(&body)
            .send()
            .await
            .expect("sqs request");
        let status = response.status();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "sqs {target}: {status} {value}");
        value
    }

    /// The messages visible within `wait`, as the Lambda SQS event the queue's event
    /// source mapping would deliver (deleted from the queue, as a successful batch is).
    pub async fn receive_event(&self, wait: Duration) -> Option<Value> {
        let started = Instant::now();
        loop {
            let got = self
                .call("ReceiveMessage", json!({"QueueUrl": self.url, "MaxNumberOfMessages": 10, "AttributeNames": ["All"]}))
                .await;
            let messages = got["Messages"].as_array().cloned().unwrap_or_default();
            if !messages.is_empty() {
                for message in &messages {
                    self.call(
                        "DeleteMessage",
                        json!({"QueueUrl": self.url, "ReceiptHandle": message["ReceiptHandle"]}),
                    )
                    .await;
                }
                let records: Vec<Value> = messages
                    .iter()
                    .map(|m| json!({
                        "messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
                        "attributes": m["Attributes"], "messageAttributes": {}, "md5OfBody": m["MD5OfBody"],
                        "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:verify",
                        "awsRegion": "us-east-1"
                    }))
                    .collect();
                return Some(json!({"Records": records}));
            }
            if started.elapsed() >= wait {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The `DelaySeconds` the queue would apply, read back from a message's attributes is
    /// not exposed by SQS; the number of messages waiting (visible or delayed) is.
    pub async fn waiting(&self) -> u64 {
        let got = self
            .call("GetQueueAttributes", json!({"QueueUrl": self.url, "AttributeNames": ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesDelayed"]}))
            .await;
        let count = |name: &str| {
            got["Attributes"][name]
                .as_str()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        count("ApproximateNumberOfMessages") + count("ApproximateNumberOfMessagesDelayed")
    }
}
