//! Logging: one JSON object per line, which Lambda's JSON log format and CloudWatch Logs
//! Insights read field by field.

use tracing_subscriber::EnvFilter;

/// Installs the JSON log subscriber (level from `RUST_LOG`, default `info`). Safe to call twice.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // `try_init` fails only if a subscriber is already installed, which is fine.
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(false)
        .with_ansi(false)
        .with_env_filter(filter)
        .try_init();
}
