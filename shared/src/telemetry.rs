//! Logging: one JSON object per line, which Lambda's JSON log format and CloudWatch Logs
//! Insights read field by field.
//!
//! Credentials never reach the log, whatever `RUST_LOG` asks for: the AWS SDK's signer
//! logs canonical requests (with `x-amz-security-token`) at trace level and its HTTP stack
//! dumps whole requests (with `authorization`), so the crates that see signed requests,
//! tokens or webhook URLs log at `info` at most.

use tracing::{Level, Metadata};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::{FilterExt as _, filter_fn};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

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
/// credential guard on top). Safe to call twice.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let layer = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(false)
        .with_ansi(false)
        .with_filter(filter.and(filter_fn(safe_to_log)));
    // `try_init` fails only if a subscriber is already installed, which is fine.
    let _ = tracing_subscriber::registry().with(layer).try_init();
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
}
