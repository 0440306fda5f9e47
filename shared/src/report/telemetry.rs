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

/// Installs the JSON log subscriber (level from `RUST_LOG`, default `info`, with the
/// credential guard on top, for spans as for events). Safe to call twice.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // `try_init` fails only if a subscriber is already installed, which is fine.
    let _ = tracing_subscriber::registry()
        .with(json_layer(filter, std::io::stdout))
        .try_init();
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

    /// Every line the layer writes, as JSON.
    fn logged(run: impl FnOnce()) -> Vec<serde_json::Value> {
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
        let layer = json_layer(EnvFilter::new("debug"), move || writer.clone());
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
