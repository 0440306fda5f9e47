//! The AWS emulator (`moto_server`, from the project's `.venv`) on a free loopback port,
//! with the few SNS / SQS / Secrets Manager / IAM calls tests need, made over plain HTTP.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::events::workspace_root;
use crate::local_server::{free_port, serve};

/// Account id moto uses.
pub const ACCOUNT: &str = "123456789012";

/// A running moto server.
pub struct Moto {
    /// `http://127.0.0.1:PORT`, for `AWS_ENDPOINT_URL`.
    pub url: String,
    child: Child,
    http: reqwest::Client,
}

impl Moto {
    /// Starts `moto_server` (from `.venv`, or `MOTO_SERVER`).
    pub async fn start() -> Moto {
        Moto::start_with_env(&[]).await
    }

    /// Starts a server that enforces IAM once `free_calls` requests have been made (its
    /// `INITIAL_NO_AUTH_ACTION_COUNT`), so a caller without a policy is denied as in AWS.
    pub async fn start_enforcing_iam_after(free_calls: u32) -> Moto {
        Moto::start_with_env(&[("INITIAL_NO_AUTH_ACTION_COUNT", free_calls.to_string())]).await
    }

    async fn start_with_env(env: &[(&str, String)]) -> Moto {
        let binary = std::env::var_os("MOTO_SERVER")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| workspace_root().join(".venv/bin/moto_server"));
        assert!(
            binary.exists(),
            "{} missing: run scripts/setup",
            binary.display()
        );
        let port = free_port();
        let mut command = Command::new(binary);
        command
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stderr(Stdio::null());
        let (child, url) = serve(
            command,
            port,
            "/moto-api/",
            Duration::from_secs(30),
            "moto_server",
        )
        .await;
        let http = reqwest::Client::new();
        Moto { url, child, http }
    }

    /// Environment for a process that should talk to this emulator.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.url.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ]
    }

    /// A query-protocol call (SNS, IAM): form-encoded parameters, XML answer.
    pub async fn query(&self, service: &str, params: &[(&str, &str)]) -> String {
        let body: String = params
            .iter()
            .map(|(k, v)| format!("{}={}", form_urlencode(k), form_urlencode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let response = self
            .http
            .post(format!("{}/", self.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("authorization", format!("AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=0"))
            .body(body)
            .send()
            .await
            .expect("moto request");
        let status = response.status();
        let text = response.text().await.expect("moto body");
        assert!(status.is_success(), "{service} {params:?}: {status} {text}");
        text
    }

    /// A JSON-protocol call: `service` signs the request, `target` is the
    /// `X-Amz-Target` (`AmazonSQS.CreateQueue`), `version` the `application/x-amz-json-` one.
    async fn json_call(&self, service: &str, version: &str, target: &str, body: Value) -> Value {
        let response = self
            .http
            .post(format!("{}/", self.url))
            .header("content-type", format!("application/x-amz-json-{version}"))
            .header("x-amz-target", target)
            .header("authorization", format!("AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=0"))
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{service} request: {e}"));
        let status = response.status();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{target}: {status} {value}");
        value
    }

    async fn sqs(&self, action: &str, body: Value) -> Value {
        self.json_call("sqs", "1.0", &format!("AmazonSQS.{action}"), body)
            .await
    }

    /// A Secrets Manager call (`CreateSecret`, `DeleteSecret`, ...).
    pub async fn secretsmanager(&self, action: &str, body: Value) -> Value {
        self.json_call(
            "secretsmanager",
            "1.1",
            &format!("secretsmanager.{action}"),
            body,
        )
        .await
    }

    /// Writes `lines` to the log group `group` (created with a stream of its own if new), as
    /// Lambda delivers a function's output to its log group; no lines: only creates it.
    pub async fn deliver_logs(&self, group: &str, lines: &[String]) {
        let logs = |action: &str, body: Value| {
            let target = format!("Logs_20140328.{action}");
            async move { self.json_call("logs", "1.1", &target, body).await }
        };
        let groups = logs("DescribeLogGroups", json!({"logGroupNamePrefix": group})).await;
        let exists = groups["logGroups"]
            .as_array()
            .is_some_and(|all| all.iter().any(|g| g["logGroupName"] == group));
        if !exists {
            logs("CreateLogGroup", json!({"logGroupName": group})).await;
            logs(
                "CreateLogStream",
                json!({"logGroupName": group, "logStreamName": "function"}),
            )
            .await;
        }
        if lines.is_empty() {
            return;
        }
        let now = chrono::Utc::now().timestamp_millis();
        let events: Vec<Value> = lines
            .iter()
            .map(|line| json!({"timestamp": now, "message": line}))
            .collect();
        logs(
            "PutLogEvents",
            json!({"logGroupName": group, "logStreamName": "function", "logEvents": events}),
        )
        .await;
    }

    /// Creates a secret holding `value`; returns its full ARN.
    pub async fn create_secret(&self, name: &str, value: &str) -> String {
        let created = self
            .secretsmanager("CreateSecret", json!({"Name": name, "SecretString": value}))
            .await;
        created["ARN"].as_str().expect("secret ARN").to_owned()
    }

    /// Creates an SNS topic; returns its ARN.
    pub async fn create_topic(&self, name: &str) -> String {
        let xml = self
            .query("sns", &[("Action", "CreateTopic"), ("Name", name)])
            .await;
        between(&xml, "<TopicArn>", "</TopicArn>").to_owned()
    }

    /// Creates an SQS queue subscribed to `topic` (optionally with a filter policy on
    /// message attributes); returns the queue URL.
    pub async fn subscribe_queue(
        &self,
        topic: &str,
        queue: &str,
        filter_policy: Option<&Value>,
    ) -> String {
        let created = self.sqs("CreateQueue", json!({"QueueName": queue})).await;
        let queue_url = created["QueueUrl"].as_str().expect("queue url").to_owned();
        let queue_arn = format!("arn:aws:sqs:us-east-1:{ACCOUNT}:{queue}");
        let mut params = vec![
            ("Action", "Subscribe".to_owned()),
            ("TopicArn", topic.to_owned()),
            ("Protocol", "sqs".to_owned()),
            ("Endpoint", queue_arn),
        ];
        if let Some(policy) = filter_policy {
            params.push(("Attributes.entry.1.key", "FilterPolicy".into()));
            params.push(("Attributes.entry.1.value", policy.to_string()));
            params.push(("Attributes.entry.2.key", "FilterPolicyScope".into()));
            params.push(("Attributes.entry.2.value", "MessageAttributes".into()));
        }
        let borrowed: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.query("sns", &borrowed).await;
        queue_url
    }

    /// Publishes a message with string attributes; returns the MessageId.
    pub async fn publish(
        &self,
        topic: &str,
        subject: &str,
        message: &str,
        attributes: &[(&str, &str)],
    ) -> String {
        let mut params = vec![
            ("Action".to_owned(), "Publish".to_owned()),
            ("TopicArn".to_owned(), topic.to_owned()),
            ("Subject".to_owned(), subject.to_owned()),
            ("Message".to_owned(), message.to_owned()),
        ];
        for (i, (name, value)) in attributes.iter().enumerate() {
            let n = i + 1;
            params.push((
                format!("MessageAttributes.entry.{n}.Name"),
                (*name).to_owned(),
            ));
            params.push((
                format!("MessageAttributes.entry.{n}.Value.DataType"),
                "String".to_owned(),
            ));
            params.push((
                format!("MessageAttributes.entry.{n}.Value.StringValue"),
                (*value).to_owned(),
            ));
        }
        let borrowed: Vec<(&str, &str)> = params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let xml = self.query("sns", &borrowed).await;
        between(&xml, "<MessageId>", "</MessageId>").to_owned()
    }

    /// Drains up to ten SNS envelopes (JSON bodies) from a queue, waiting up to `wait`
    /// for the first.
    pub async fn receive(&self, queue_url: &str, wait: Duration) -> Vec<Value> {
        let started = Instant::now();
        loop {
            let got = self
                .sqs("ReceiveMessage", json!({"QueueUrl": queue_url, "MaxNumberOfMessages": 10, "MessageAttributeNames": ["All"]}))
                .await;
            let messages: Vec<Value> = got["Messages"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| serde_json::from_str(m["Body"].as_str().unwrap_or("")).ok())
                .collect();
            if !messages.is_empty() || started.elapsed() >= wait {
                return messages;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// The text between the first `start` and the `end` after it (a field of an XML answer).
pub fn between<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    text.split_once(start)
        .and_then(|(_, rest)| rest.split_once(end))
        .map(|(inside, _)| inside)
        .unwrap_or_else(|| panic!("no {start} in {text}"))
}

/// Percent-encodes everything but RFC 3986's unreserved characters, as AWS signs them.
pub fn form_urlencode(value: &str) -> String {
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
