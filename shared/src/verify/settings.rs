//! The verification settings, read with the rest of the configuration.

use std::time::Duration;

use super::checks::{self, Check};
use crate::error::{Error, Result};
use crate::variables::{boolean, number};

/// SQS delivers a message at most 15 minutes after it was sent.
pub const MAX_VERIFY_AFTER: Duration = Duration::from_secs(900);

/// How and when applied changes are verified.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// `VERIFY_AFTER_SECONDS`: delay between a change and its check (default 300; 0: off).
    pub after: Duration,
    /// `VERIFY_QUEUE_URL`: the function's verify queue; unset, nothing is scheduled.
    pub queue_url: Option<String>,
    /// `PROMETHEUS_URL`: a Prometheus base URL, or an AMP workspace URL (signed).
    pub prometheus_url: Option<String>,
    /// `VERIFY_WORSE_MARGIN`: how much above its value before the change (relative) a
    /// measure above its threshold must be to count as worse (default 0.2).
    pub worse_margin: f64,
    /// `VERIFY_CHECKS`: the checks replacing this function's defaults.
    pub checks: Option<Vec<Check>>,
    /// `VERIFY_MATCH_CLUSTER`: the series carry `cluster` (one Prometheus over several
    /// clusters), so queries select the alert's cluster (default false).
    pub match_cluster: bool,
    /// `PROMETHEUS_TIMEOUT_MS`: time one query (or the queue's send) may take (default 5000).
    pub timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            after: Duration::from_secs(300),
            queue_url: None,
            prometheus_url: None,
            worse_margin: 0.2,
            checks: None,
            match_cluster: false,
            timeout: Duration::from_millis(5000),
        }
    }
}

impl Settings {
    /// Whether applied changes are verified.
    pub fn enabled(&self) -> bool {
        !self.after.is_zero() && self.queue_url.is_some()
    }

    /// Reads the settings through `get` (blank values are unset).
    pub fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<Self> {
        let defaults = Settings::default();
        let after = Duration::from_secs(number(
            get,
            "VERIFY_AFTER_SECONDS",
            defaults.after.as_secs(),
            0,
        )?);
        if after > MAX_VERIFY_AFTER {
            return Err(Error::Config {
                var: "VERIFY_AFTER_SECONDS",
                message: format!(
                    "{}s is longer than the verify queue's longest delivery delay (900s)",
                    after.as_secs()
                ),
            });
        }
        let prometheus_url = get("PROMETHEUS_URL");
        if let Some(url) = &prometheus_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(Error::Config {
                var: "PROMETHEUS_URL",
                message: "not an http(s) URL".into(),
            });
        }
        let queue_url = get("VERIFY_QUEUE_URL");
        if queue_url.is_some() && !after.is_zero() && prometheus_url.is_none() {
            return Err(Error::Config {
                var: "PROMETHEUS_URL",
                message: "not set, but VERIFY_QUEUE_URL is: changes would be scheduled for a verification that cannot run; set it, or VERIFY_AFTER_SECONDS=0".into(),
            });
        }
        let worse_margin = match get("VERIFY_WORSE_MARGIN") {
            None => defaults.worse_margin,
            Some(raw) => match raw.parse::<f64>() {
                Ok(v) if v.is_finite() && v >= 0.0 => v,
                _ => {
                    return Err(Error::Config {
                        var: "VERIFY_WORSE_MARGIN",
                        message: format!("\"{raw}\" is not a non-negative number (0.2 is 20 %)"),
                    });
                }
            },
        };
        let checks = match get("VERIFY_CHECKS") {
            None => None,
            Some(raw) => Some(
                checks::parse_override(&raw).map_err(|message| Error::Config {
                    var: "VERIFY_CHECKS",
                    message,
                })?,
            ),
        };
        Ok(Settings {
            after,
            queue_url,
            prometheus_url,
            worse_margin,
            checks,
            match_cluster: boolean(get, "VERIFY_MATCH_CLUSTER", false)?,
            timeout: Duration::from_millis(number(get, "PROMETHEUS_TIMEOUT_MS", 5000, 1)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::from_lookup(&|name: &str| {
            vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn off_without_a_queue_and_on_with_one() {
        let defaults = settings(&[]).expect("valid");
        assert_eq!(defaults.after, Duration::from_secs(300));
        assert!(!defaults.enabled());
        let on = settings(&[
            (
                "VERIFY_QUEUE_URL",
                "https://sqs.us-east-1.amazonaws.com/1/q",
            ),
            ("PROMETHEUS_URL", "http://prometheus:9090"),
        ])
        .expect("valid");
        assert!(on.enabled());
        let off = settings(&[
            (
                "VERIFY_QUEUE_URL",
                "https://sqs.us-east-1.amazonaws.com/1/q",
            ),
            ("VERIFY_AFTER_SECONDS", "0"),
        ])
        .expect("valid");
        assert!(!off.enabled());
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (vars, var) in [
            (
                vec![("VERIFY_AFTER_SECONDS", "901")],
                "VERIFY_AFTER_SECONDS",
            ),
            (
                vec![("VERIFY_AFTER_SECONDS", "soon")],
                "VERIFY_AFTER_SECONDS",
            ),
            (vec![("VERIFY_QUEUE_URL", "https://q")], "PROMETHEUS_URL"),
            (
                vec![("PROMETHEUS_URL", "prometheus:9090")],
                "PROMETHEUS_URL",
            ),
            (vec![("VERIFY_WORSE_MARGIN", "-1")], "VERIFY_WORSE_MARGIN"),
            (vec![("VERIFY_CHECKS", "[]")], "VERIFY_CHECKS"),
            (
                vec![("VERIFY_MATCH_CLUSTER", "perhaps")],
                "VERIFY_MATCH_CLUSTER",
            ),
        ] {
            match settings(&vars) {
                Err(Error::Config { var: got, .. }) => assert_eq!(got, var, "{vars:?}"),
                other => panic!("{vars:?}: {other:?}"),
            }
        }
    }
}
