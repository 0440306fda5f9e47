//! Logging: one JSON object per line, which Lambda's JSON log format and CloudWatch Logs
//! Insights read field by field.
//!
//! An event's own fields are at the top level. Each pipeline stage runs in a span with the
//! invocation's `trace_id` (and the `alert` and `target` it works on): a line logged inside
//! one carries the innermost span as `span` (`span.trace_id`, `span.target`, `span.name`,
//! the stage) and the whole path as `spans`, so no call passes the trace id by hand.
//!
//! Credentials never reach the log, whatever `RUST_LOG` asks for: the AWS SDK's signer
//! logs canonical requests (with `x-amz-security-token`) at trace level and its HTTP stack
//! dumps whole requests (with `authorization`), so the crates that see signed requests,
//! tokens or webhook URLs log at `info` at most.

use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::filter::{FilterExt as _, filter_fn};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

/// Log targets whose debug and trace events can carry credentials (signed AWS requests,
/// session tokens, bearer tokens, webhook URLs). A name ending in `_` is a prefix
/// (`aws_sdk_` covers every service client); others cover the crate and its modules.
pub const CREDENTIAL_BEARING_TARGETS: &[&str] = &[
    "aws_sigv4",
    "aws_smithy_",
    "aws_sdk_",
    "aws_runtime",
    "aws_config",
    "aws_credential_types",
    "hyper",
    "hyper_util",
    "hyper_rustls",
    "h2",
    "reqwest",
    "rustls",
    "tower_http",
];

/// Whether events of `target` may carry credentials (see [`CREDENTIAL_BEARING_TARGETS`]).
pub fn may_carry_credentials(target: &str) -> bool {
    CREDENTIAL_BEARING_TARGETS.iter().any(|name| {
        if name.ends_with('_') {
            target.starts_with(name)
        } else {
            target == *name
                || target
                    .strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with("::"))
        }
    })
}

/// Whether an event passes the credential guard: anything at `info` or above, and
/// anything more verbose only from targets that never carry credentials.
pub fn safe_to_log(metadata: &Metadata<'_>) -> bool {
    *metadata.level() <= Level::INFO || !may_carry_credentials(metadata.target())
}

/// Installs the JSON log subscriber (level from [`log_filter`], with the credential guard
/// on top, for spans as for events). Safe to call twice.
pub fn init() {
    let rust_log = std::env::var("RUST_LOG").ok();
    let lambda_level = std::env::var("AWS_LAMBDA_LOG_LEVEL").ok();
    let (directives, problem) = log_filter(rust_log.as_deref(), lambda_level.as_deref());
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"));
    // `try_init` fails only if a subscriber is already installed, which is fine.
    let installed = tracing_subscriber::registry()
        .with(json_layer(filter, std::io::stdout))
        .try_init()
        .is_ok();
    if let (true, Some(problem)) = (installed, problem) {
        tracing::warn!(filter = %directives, "{problem}");
    }
}

/// The log filter: `RUST_LOG` when set (full `EnvFilter` syntax), else the level Lambda's
/// log-level control sets (`AWS_LAMBDA_LOG_LEVEL`: TRACE, DEBUG, INFO, WARN, ERROR, FATAL;
/// `tracing` has no FATAL, so ERROR), else `info`. Also a warning to log, if any.
pub fn log_filter(rust_log: Option<&str>, lambda_level: Option<&str>) -> (String, Option<String>) {
    let lambda_level = lambda_level.map(str::trim).filter(|v| !v.is_empty());
    let (level, warning) = match lambda_level.map(str::to_ascii_uppercase).as_deref() {
        None | Some("INFO") => ("info", None),
        Some("TRACE") => ("trace", None),
        Some("DEBUG") => ("debug", None),
        // Lambda gives lines without a level (the EMF metric lines) INFO and drops them
        // above INFO, whatever RUST_LOG says, so the metrics and their alarms go quiet.
        Some(quieter @ ("WARN" | "ERROR" | "FATAL")) => (
            if quieter == "WARN" { "warn" } else { "error" },
            Some(format!(
                "AWS_LAMBDA_LOG_LEVEL={quieter}: Lambda drops the metric lines (INFO to its filter), so the MeshRemediation metrics and their alarms see nothing; keep the application log level at INFO and quieten the functions with RUST_LOG instead"
            )),
        ),
        Some(other) => (
            "info",
            Some(format!(
                "AWS_LAMBDA_LOG_LEVEL=\"{}\" is not one of TRACE, DEBUG, INFO, WARN, ERROR, FATAL; logging at info",
                crate::intake::names::printable(other)
            )),
        ),
    };
    let directives = match rust_log.map(str::trim).filter(|v| !v.is_empty()) {
        Some(rust_log) => rust_log.to_owned(),
        None => level.to_owned(),
    };
    (directives, warning)
}

/// One JSON object per line to `writer`: the event's fields at the top level, the current
/// span as `span` and the path of spans as `spans`.
fn json_layer<S, W>(filter: EnvFilter, writer: W) -> impl Layer<S>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(true)
        .with_target(false)
        .with_ansi(false)
        .with_writer(writer)
        .with_filter(filter.and(filter_fn(safe_to_log)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_bearing_crates_are_recognised_with_their_modules() {
        for target in [
            "aws_sigv4::http_request::sign",
            "aws_smithy_runtime::client::orchestrator",
            "aws_sdk_sns::operation::publish",
            "hyper_util::client::legacy::pool",
            "reqwest::connect",
            "rustls",
        ] {
            assert!(may_carry_credentials(target), "{target}");
        }
        for target in [
            "mesh_remediation::pipeline",
            "kube_client::client",
            "hyperlocal",
            "lambda_runtime",
        ] {
            assert!(!may_carry_credentials(target), "{target}");
        }
    }

    #[test]
    fn rust_log_wins_then_the_lambda_log_level_then_info() {
        let filter = |rust_log, lambda| log_filter(rust_log, lambda).0;
        assert_eq!(
            filter(Some("mesh_remediation=debug"), Some("ERROR")),
            "mesh_remediation=debug"
        );
        // The template passes RUST_LOG="" by default: that is unset.
        assert_eq!(filter(Some(" "), Some("DEBUG")), "debug");
        for (lambda, level) in [
            ("TRACE", "trace"),
            ("DEBUG", "debug"),
            ("INFO", "info"),
            ("WARN", "warn"),
            ("ERROR", "error"),
            ("FATAL", "error"),
            ("debug", "debug"),
        ] {
            assert_eq!(filter(None, Some(lambda)), level, "{lambda}");
        }
        assert_eq!(filter(None, None), "info");
        let (unknown, warning) = log_filter(None, Some("LOUD"));
        assert_eq!(unknown, "info");
        assert!(warning.is_some_and(|w| w.contains("LOUD")));
        let (_, warning) = log_filter(None, Some("WARN"));
        assert!(warning.is_some_and(|w| w.contains("metric")));
        assert!(log_filter(None, Some("INFO")).1.is_none());
    }

    #[test]
    fn the_lambda_log_level_filters_what_is_written() {
        let (directives, _) = log_filter(None, Some("WARN"));
        let lines = logged_with(EnvFilter::new(directives), || {
            tracing::info!("routine");
            tracing::warn!("worth a look");
            tracing::error!("broken");
        });
        let messages: Vec<&str> = lines.iter().filter_map(|l| l["message"].as_str()).collect();
        assert_eq!(messages, ["worth a look", "broken"]);
        assert_eq!(lines[0]["level"], "WARN", "Lambda's filter reads this key");
    }

    /// Every line the layer writes, as JSON.
    fn logged(run: impl FnOnce()) -> Vec<serde_json::Value> {
        logged_with(EnvFilter::new("debug"), run)
    }

    /// Every line the layer writes through `filter`, as JSON.
    fn logged_with(filter: EnvFilter, run: impl FnOnce()) -> Vec<serde_json::Value> {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("log buffer").extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let layer = json_layer(filter, move || writer.clone());
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), run);
        let text = String::from_utf8(buffer.0.lock().expect("log buffer").clone()).expect("utf-8");
        text.lines()
            .map(|line| serde_json::from_str(line).expect("a JSON line"))
            .collect()
    }

    #[test]
    fn lines_keep_their_fields_on_top_and_carry_their_stage_span() {
        let lines = logged(|| {
            let pipeline = tracing::info_span!("pipeline", trace_id = "1-abc");
            let _pipeline = pipeline.enter();
            let enact = tracing::info_span!(
                "enact",
                trace_id = "1-abc",
                alert = "HighP95Latency",
                target = "Deployment shop/checkout-v2"
            );
            let _enact = enact.enter();
            tracing::info!(attempt = 1, "write conflict; re-reading and deciding again");
            tracing::info!(
                trace_id = "1-abc",
                outcome = "applied",
                "remediation outcome"
            );
            // Spans of crates that may carry credentials are left out like their events.
            let signing = tracing::debug_span!(target: "aws_sigv4", "sign", secret = "s3cr3t");
            let _signing = signing.enter();
            tracing::info!("inside a credential-bearing span");
        });
        assert_eq!(lines.len(), 3, "{lines:#?}");
        let conflict = &lines[0];
        assert_eq!(conflict["attempt"], 1);
        assert_eq!(conflict["span"]["name"], "enact");
        assert_eq!(conflict["span"]["trace_id"], "1-abc");
        assert_eq!(conflict["span"]["target"], "Deployment shop/checkout-v2");
        let path: Vec<&str> = conflict["spans"]
            .as_array()
            .expect("span list")
            .iter()
            .filter_map(|s| s["name"].as_str())
            .collect();
        assert_eq!(path, ["pipeline", "enact"]);
        let outcome = &lines[1];
        assert_eq!(outcome["trace_id"], "1-abc");
        assert_eq!(outcome["outcome"], "applied");
        assert_eq!(outcome["message"], "remediation outcome");
        assert!(!lines[2].to_string().contains("s3cr3t"), "{}", lines[2]);
    }
}
