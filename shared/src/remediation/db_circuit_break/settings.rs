//! db-circuit-break's settings: the breaker's values and `CB_LOCALITY_LB`, from the
//! environment; a bad value names its variable.

use serde_json::{Value, json};

use crate::config;
use crate::error::{Error, Result};
use crate::remediation::istio;

/// Circuit-breaker settings, from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitBreaker {
    /// `CB_CONSECUTIVE_ERRORS` -> `outlierDetection.consecutive5xxErrors` (default 5).
    pub consecutive_errors: u32,
    /// `CB_INTERVAL` -> `outlierDetection.interval` (default `10s`).
    pub interval: String,
    /// `CB_BASE_EJECTION_TIME` -> `outlierDetection.baseEjectionTime` (default `30s`).
    pub base_ejection_time: String,
    /// `CB_MAX_EJECTION_PERCENT` -> `outlierDetection.maxEjectionPercent` (default 50).
    pub max_ejection_percent: u32,
    /// `CB_MAX_CONNECTIONS` -> `connectionPool.tcp.maxConnections` (default 100).
    pub max_connections: u32,
    /// `CB_CONNECT_TIMEOUT` -> `connectionPool.tcp.connectTimeout` (default `2s`).
    pub connect_timeout: String,
    /// `CB_MAX_PENDING_REQUESTS` -> `connectionPool.http.http1MaxPendingRequests` (default 64).
    pub max_pending_requests: u32,
    /// `RESTORE_ON_RESOLVE`: a resolved alert restores the previous policy (default true).
    pub restore_on_resolve: bool,
    /// `CB_LOCALITY_LB`: what happens to locality-prioritised load balancing, which outlier
    /// detection switches on (default [`LocalityLb::Preserve`]).
    pub locality_lb: LocalityLb,
}

/// `CB_LOCALITY_LB`: whether the breaker may change where traffic goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LocalityLb {
    /// `preserve`: turn locality-prioritised load balancing off where the rule has no
    /// locality setting, so the spread across regions stays as it was.
    #[default]
    Preserve,
    /// `prioritize`: let outlier detection switch it on (clients prefer their region).
    Prioritize,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker {
            consecutive_errors: 5,
            interval: "10s".into(),
            base_ejection_time: "30s".into(),
            max_ejection_percent: 50,
            max_connections: 100,
            connect_timeout: "2s".into(),
            max_pending_requests: 64,
            restore_on_resolve: true,
            locality_lb: LocalityLb::Preserve,
        }
    }
}

/// The largest value an Istio `int32` field takes.
const INT32_MAX: u32 = i32::MAX as u32;

impl CircuitBreaker {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the settings through `lookup`; a bad value names its variable.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let get = config::trimmed(lookup);
        let defaults = CircuitBreaker::default();
        let duration = |var: &'static str, default: String| match get(var) {
            None => Ok(default),
            Some(raw) => istio::duration_setting(var, &raw),
        };
        let bounded = |var: &'static str, default: u32, min: u32, max: u32| {
            let value = crate::variables::number(&get, var, default, min)?;
            if value > max {
                return Err(Error::Config {
                    var,
                    message: format!("{value} is above the maximum {max}"),
                });
            }
            Ok(value)
        };
        Ok(CircuitBreaker {
            consecutive_errors: bounded(
                "CB_CONSECUTIVE_ERRORS",
                defaults.consecutive_errors,
                1,
                INT32_MAX,
            )?,
            interval: duration("CB_INTERVAL", defaults.interval)?,
            base_ejection_time: duration("CB_BASE_EJECTION_TIME", defaults.base_ejection_time)?,
            max_ejection_percent: bounded(
                "CB_MAX_EJECTION_PERCENT",
                defaults.max_ejection_percent,
                1,
                100,
            )?,
            max_connections: bounded("CB_MAX_CONNECTIONS", defaults.max_connections, 1, INT32_MAX)?,
            connect_timeout: duration("CB_CONNECT_TIMEOUT", defaults.connect_timeout)?,
            max_pending_requests: bounded(
                "CB_MAX_PENDING_REQUESTS",
                defaults.max_pending_requests,
                1,
                INT32_MAX,
            )?,
            restore_on_resolve: crate::variables::boolean(
                &get,
                "RESTORE_ON_RESOLVE",
                defaults.restore_on_resolve,
            )?,
            locality_lb: match get("CB_LOCALITY_LB").as_deref() {
                None | Some("preserve") => LocalityLb::Preserve,
                Some("prioritize") => LocalityLb::Prioritize,
                Some(other) => {
                    return Err(Error::Config {
                        var: "CB_LOCALITY_LB",
                        message: format!(
                            "\"{}\" is neither preserve nor prioritize",
                            crate::intake::names::printable(other)
                        ),
                    });
                }
            },
        })
    }

    /// The `trafficPolicy` merge patch these settings make.
    pub fn policy_patch(&self) -> Value {
        json!({
            "outlierDetection": {
                "consecutive5xxErrors": self.consecutive_errors,
                "interval": self.interval,
                "baseEjectionTime": self.base_ejection_time,
                "maxEjectionPercent": self.max_ejection_percent,
            },
            "connectionPool": {
                "tcp": {
                    "maxConnections": self.max_connections,
                    "connectTimeout": self.connect_timeout,
                },
                "http": { "http1MaxPendingRequests": self.max_pending_requests },
            },
        })
    }

    pub(super) fn summary(&self) -> String {
        format!(
            "circuit breaker on: outlierDetection consecutive5xxErrors={} interval={} baseEjectionTime={} maxEjectionPercent={}; \
             connectionPool tcp.maxConnections={} tcp.connectTimeout={} http.http1MaxPendingRequests={}",
            self.consecutive_errors,
            self.interval,
            self.base_ejection_time,
            self.max_ejection_percent,
            self.max_connections,
            self.connect_timeout,
            self.max_pending_requests
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<CircuitBreaker> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CircuitBreaker::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_and_overrides() {
        let defaults = settings(&[]).expect("defaults");
        assert_eq!(defaults, CircuitBreaker::default());
        let custom = settings(&[
            ("CB_CONSECUTIVE_ERRORS", "3"),
            ("CB_CONNECT_TIMEOUT", "500ms"),
            ("RESTORE_ON_RESOLVE", "false"),
        ])
        .expect("valid");
        assert_eq!(custom.consecutive_errors, 3);
        assert_eq!(custom.connect_timeout, "500ms");
        assert!(!custom.restore_on_resolve);
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, value) in [
            ("CB_CONSECUTIVE_ERRORS", "0"),
            ("CB_CONSECUTIVE_ERRORS", "five"),
            ("CB_INTERVAL", "10"),
            ("CB_BASE_EJECTION_TIME", "0s"),
            ("CB_MAX_EJECTION_PERCENT", "101"),
            ("CB_MAX_CONNECTIONS", "3000000000"),
            ("CB_CONNECT_TIMEOUT", "fast"),
            ("CB_MAX_PENDING_REQUESTS", "-1"),
            ("RESTORE_ON_RESOLVE", "sometimes"),
            ("CB_LOCALITY_LB", "off"),
        ] {
            match settings(&[(var, value)]) {
                Err(Error::Config { var: got, .. }) => assert_eq!(got, var, "{value}"),
                other => panic!("{var}={value}: {other:?}"),
            }
        }
    }
}
