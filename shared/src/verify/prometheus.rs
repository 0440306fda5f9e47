//! The Prometheus HTTP API, instant queries only (`/api/v1/query`, POST form): a plain
//! Prometheus URL, or an Amazon Managed Prometheus workspace whose requests are signed
//! with SigV4 (service `aps`). A value is a number or an error: no answer, an error
//! answer, an empty result or NaN is [`Error::Prometheus`], never a guess.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::aws::AwsAccess;
use super::sign::{Post, amp_region};
use crate::error::{Error, Result};

/// Where queries go and how they are signed.
pub struct Prometheus {
    /// Base URL, e.g. `http://prometheus:9090` or an AMP workspace URL.
    base: String,
    /// The AMP region, when the URL is a workspace's: requests are signed.
    amp_region: Option<String>,
    http: reqwest::Client,
    aws: Arc<AwsAccess>,
}

impl Prometheus {
    /// A client for `base` with a per-query `timeout`.
    pub fn new(base: &str, timeout: Duration, aws: Arc<AwsAccess>) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|err| Error::Prometheus {
                message: format!("cannot build the HTTP client: {err}"),
                retryable: false,
            })?;
        Ok(Prometheus {
            base: base.trim_end_matches('/').to_owned(),
            amp_region: amp_region(base),
            http,
            aws,
        })
    }

    /// The value of `promql` now, or at `time`.
    pub async fn value(&self, promql: &str, time: Option<DateTime<Utc>>) -> Result<f64> {
        let url = format!("{}/api/v1/query", self.base);
        let mut form = vec![("query", promql.to_owned())];
        if let Some(time) = time {
            form.push((
                "time",
                format!("{:.3}", time.timestamp_millis() as f64 / 1000.0),
            ));
        }
        let body = form_body(&form);
        let content_type = "application/x-www-form-urlencoded";
        let mut request = self
            .http
            .post(&url)
            .header("content-type", content_type)
            .body(body.clone());
        if let Some(region) = &self.amp_region {
            let headers = [("content-type", content_type)];
            let post = Post {
                url: &url,
                headers: &headers,
                body: body.as_bytes(),
            };
            for (name, value) in self.aws.sign(&post, "aps", Some(region)).await? {
                request = request.header(name, value);
            }
        }
        let at = time.map_or("now".to_owned(), |t| t.to_rfc3339());
        let failed = |message: String, retryable: bool| Error::Prometheus {
            message: format!("{message} (query {promql} at {at})"),
            retryable,
        };
        let response = request
            .send()
            .await
            .map_err(|err| failed(format!("{} unreachable: {err}", self.base), true))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|err| failed(format!("answer lost: {err}"), true))?;
        if !status.is_success() {
            // 400 and 422 mean the query itself is wrong: no retry fixes it.
            let retryable = !matches!(status.as_u16(), 400 | 422);
            let detail: String = text.chars().take(300).collect();
            return Err(failed(format!("answered {status}: {detail}"), retryable));
        }
        parse_value(&text).map_err(|why| failed(why, true))
    }
}

/// `application/x-www-form-urlencoded` of `pairs`.
fn form_body(pairs: &[(&str, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char);
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// The one number an instant query's answer holds: a scalar, or the largest sample of a
/// vector (the worst, as every check reads lower as better).
pub fn parse_value(text: &str) -> std::result::Result<f64, String> {
    let answer: Value =
        serde_json::from_str(text).map_err(|err| format!("answer is not JSON: {err}"))?;
    if answer.get("status").and_then(Value::as_str) != Some("success") {
        return Err(format!(
            "answer status is not success: {}",
            answer
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("no error given")
        ));
    }
    let data = answer.get("data").ok_or("answer has no data")?;
    let samples: Vec<&Value> = match data.get("resultType").and_then(Value::as_str) {
        Some("scalar") => data.get("result").into_iter().collect(),
        Some("vector") => data
            .get("result")
            .and_then(Value::as_array)
            .map(|series| series.iter().filter_map(|s| s.get("value")).collect())
            .unwrap_or_default(),
        other => {
            return Err(format!(
                "result type {other:?} is not an instant vector or scalar"
            ));
        }
    };
    let values: Vec<f64> = samples
        .iter()
        .filter_map(|sample| sample.get(1).and_then(Value::as_str))
        .filter_map(|v| v.parse::<f64>().ok())
        .collect();
    if values.is_empty() {
        return Err("no data: the query returned no series".into());
    }
    if values.iter().any(|v| v.is_nan()) {
        return Err("no data: the query's value is NaN (no requests in its window)".into());
    }
    Ok(values.into_iter().fold(f64::NEG_INFINITY, f64::max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_become_one_number_or_say_why_not() {
        let vector = |values: &[&str]| {
            let result: Vec<Value> = values
                .iter()
                .map(|v| serde_json::json!({"metric": {}, "value": [1.0, v]}))
                .collect();
            serde_json::json!({"status": "success", "data": {"resultType": "vector", "result": result}}).to_string()
        };
        assert_eq!(parse_value(&vector(&["0.25"])), Ok(0.25));
        assert_eq!(parse_value(&vector(&["0.25", "3", "1"])), Ok(3.0));
        assert_eq!(parse_value(&vector(&["+Inf"])), Ok(f64::INFINITY));
        assert!(
            parse_value(&vector(&[]))
                .expect_err("empty")
                .contains("no data")
        );
        assert!(
            parse_value(&vector(&["NaN"]))
                .expect_err("nan")
                .contains("NaN")
        );
        let scalar =
            r#"{"status": "success", "data": {"resultType": "scalar", "result": [1.0, "7"]}}"#;
        assert_eq!(parse_value(scalar), Ok(7.0));
        let error = r#"{"status": "error", "errorType": "bad_data", "error": "parse error"}"#;
        assert!(
            parse_value(error)
                .expect_err("error")
                .contains("parse error")
        );
        assert!(parse_value("<html>").is_err());
    }

    #[test]
    fn form_values_are_percent_encoded() {
        assert_eq!(
            form_body(&[
                ("query", "sum(x{a=\"b c\"})".into()),
                ("time", "1.5".into())
            ]),
            "query=sum%28x%7Ba%3D%22b%20c%22%7D%29&time=1.5"
        );
    }
}
