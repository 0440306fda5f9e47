//! Typed configuration, read once from the environment at start.
//!
//! A malformed value stops the function at start with the variable's name, instead of
//! surfacing as odd behaviour during an incident.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::variables::{boolean, number};

use crate::error::{Error, Result};

/// Namespaces never touched unless `PROTECTED_NAMESPACES` says otherwise.
pub const DEFAULT_PROTECTED_NAMESPACES: &str =
    "kube-system,kube-public,kube-node-lease,istio-system";

/// Settings shared by every function.
#[derive(Debug, Clone)]
pub struct Config {
    /// `CLUSTER_NAMES` / `CLUSTER_NAME`: the clusters to act on (see [`crate::guard::clusters`]);
    /// none listed means kubeconfig / in-cluster.
    pub clusters: crate::guard::clusters::Clusters,
    /// `DRY_RUN`: server-side dry run for every alert (default `true`).
    pub dry_run: bool,
    /// `NOTIFY_TOPIC_ARN`: where reports are published.
    pub notify_topic_arn: Option<String>,
    /// `ALERT_TOPIC_ARN`: records from any other topic are rejected.
    pub alert_topic_arn: Option<String>,
    /// Rules the decision stage applies.
    pub policy: Policy,
    /// `API_TIMEOUT_SECONDS`: per-request timeout towards the Kubernetes API (default 10).
    pub api_timeout: Duration,
    /// `ISTIO_API_VERSION`: version of `networking.istio.io` to use (default `v1`).
    pub istio_api_version: String,
    /// `ISTIO_ROOT_NAMESPACE`: Istio's root configuration namespace, where mesh-wide
    /// DestinationRules live (default `istio-system`, meshConfig `rootNamespace`).
    pub istio_root_namespace: String,
    /// `MAX_CONCURRENCY`: targets worked on at once within one invocation (default 8).
    pub max_concurrency: usize,
    /// Direct report sinks besides the SNS topic.
    pub sinks: Sinks,
    /// Verification of applied changes (`VERIFY_*`, `PROMETHEUS_*`).
    pub verify: crate::verify::Settings,
}

pub use crate::report::sinks::{PAGERDUTY_EVENTS_URL, Secret, SinkCredential, Sinks};

/// The safety rules of the decision stage.
#[derive(Debug, Clone)]
pub struct Policy {
    /// `COOLDOWN_SECONDS`: minimum time between two actions on one target (default 900).
    pub cooldown: Duration,
    /// `MAX_TARGETS_PER_INVOCATION`: objects one invocation may change (default 10).
    pub max_targets: usize,
    /// Budgets across invocations and functions, kept in the cluster.
    pub budget: crate::guard::budget::Limits,
    /// `ESCALATE_AFTER`: actions without recovery before humans take over (default 3;
    /// 0 switches escalation off).
    pub escalate_after: u32,
    /// `ESCALATION_WINDOW_SECONDS`: actions further apart than this count as recovered (default 3600).
    pub escalation_window: Duration,
    /// `PROTECTED_NAMESPACES`: never touched.
    pub protected_namespaces: BTreeSet<String>,
    /// `ALLOWED_NAMESPACES`: when non-empty, the only namespaces touched.
    pub allowed_namespaces: BTreeSet<String>,
    /// `MAX_DELIVERY_AGE_SECONDS`: SNS messages published longer ago are stale (default 900; 0 disables).
    pub max_delivery_age: Duration,
}

impl Policy {
    /// The namespaces the functions may change objects in.
    pub fn namespaces(&self) -> crate::remediation::object::Namespaces {
        crate::remediation::object::Namespaces {
            protected: self.protected_namespaces.clone(),
            allowed: self.allowed_namespaces.clone(),
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            cooldown: Duration::from_secs(900),
            max_targets: 10,
            budget: crate::guard::budget::Limits::default(),
            escalate_after: 3,
            escalation_window: Duration::from_secs(3600),
            protected_namespaces: split_list(DEFAULT_PROTECTED_NAMESPACES),
            allowed_namespaces: BTreeSet::new(),
            max_delivery_age: Duration::from_secs(900),
        }
    }
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads configuration through `lookup` (the environment, or a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let get = trimmed(lookup);
        let defaults = Policy::default();
        let policy = Policy {
            cooldown: seconds(&get, "COOLDOWN_SECONDS", defaults.cooldown)?,
            max_targets: number(&get, "MAX_TARGETS_PER_INVOCATION", defaults.max_targets, 1)?,
            budget: crate::guard::budget::Limits {
                window: seconds(&get, "BUDGET_WINDOW_SECONDS", defaults.budget.window)?,
                per_function: number(
                    &get,
                    "MAX_ACTIONS_PER_WINDOW",
                    defaults.budget.per_function,
                    0,
                )?,
                cluster: number(
                    &get,
                    "MAX_CLUSTER_ACTIONS_PER_WINDOW",
                    defaults.budget.cluster,
                    0,
                )?,
                namespace: get("BUDGET_NAMESPACE").unwrap_or(defaults.budget.namespace),
            },
            escalate_after: number(&get, "ESCALATE_AFTER", defaults.escalate_after, 0)?,
            escalation_window: seconds(
                &get,
                "ESCALATION_WINDOW_SECONDS",
                defaults.escalation_window,
            )?,
            protected_namespaces: get("PROTECTED_NAMESPACES")
                .map(|v| split_list(&v))
                .unwrap_or(defaults.protected_namespaces),
            allowed_namespaces: get("ALLOWED_NAMESPACES")
                .map(|v| split_list(&v))
                .unwrap_or_default(),
            max_delivery_age: seconds(&get, "MAX_DELIVERY_AGE_SECONDS", defaults.max_delivery_age)?,
        };
        for (var, set) in [
            ("PROTECTED_NAMESPACES", &policy.protected_namespaces),
            ("ALLOWED_NAMESPACES", &policy.allowed_namespaces),
        ] {
            for ns in set {
                crate::intake::names::dns_label("namespace", ns)
                    .map_err(|message| Error::Config { var, message })?;
            }
        }
        crate::intake::names::dns_label("namespace", &policy.budget.namespace).map_err(
            |message| Error::Config {
                var: "BUDGET_NAMESPACE",
                message,
            },
        )?;
        if policy.budget.enabled() && policy.budget.window.is_zero() {
            return Err(Error::Config {
                var: "BUDGET_WINDOW_SECONDS",
                message: "0 leaves no window to count changes in; set MAX_ACTIONS_PER_WINDOW=0 and MAX_CLUSTER_ACTIONS_PER_WINDOW=0 to run without budgets".into(),
            });
        }
        validate_escalation(&policy)?;
        let clusters = crate::guard::clusters::Clusters::from_lookup(&get)?;
        Ok(Config {
            clusters,
            dry_run: boolean(&get, "DRY_RUN", true)?,
            notify_topic_arn: arn(&get, "NOTIFY_TOPIC_ARN")?,
            alert_topic_arn: arn(&get, "ALERT_TOPIC_ARN")?,
            policy,
            api_timeout: seconds(&get, "API_TIMEOUT_SECONDS", Duration::from_secs(10))?,
            istio_api_version: match get("ISTIO_API_VERSION").as_deref() {
                None => "v1".to_owned(),
                Some(v @ ("v1" | "v1beta1" | "v1alpha3")) => v.to_owned(),
                Some(other) => {
                    return Err(Error::Config {
                        var: "ISTIO_API_VERSION",
                        message: format!("\"{other}\" is not one of v1, v1beta1, v1alpha3"),
                    });
                }
            },
            istio_root_namespace: match get("ISTIO_ROOT_NAMESPACE") {
                None => "istio-system".to_owned(),
                Some(ns) => {
                    crate::intake::names::dns_label("ISTIO_ROOT_NAMESPACE", &ns).map_err(
                        |message| Error::Config {
                            var: "ISTIO_ROOT_NAMESPACE",
                            message,
                        },
                    )?;
                    ns
                }
            },
            max_concurrency: number(&get, "MAX_CONCURRENCY", 8, 1)?,
            sinks: Sinks::from_lookup(
                &get,
                Duration::from_millis(number(&get, "NOTIFY_TIMEOUT_MS", 3000, 1)?),
            )?,
            verify: crate::verify::Settings::from_lookup(&get)?,
        })
    }
}

/// Escalation needs actions to land within one window: with no cooldown every delivery of
/// one alert acts again at once, and with a window no longer than the cooldown no two
/// actions ever fall in one window, so escalation would silently never happen.
fn validate_escalation(policy: &Policy) -> Result<()> {
    if policy.escalate_after == 0 {
        return Ok(());
    }
    let after = policy.escalate_after;
    if policy.cooldown.is_zero() {
        return Err(Error::Config {
            var: "COOLDOWN_SECONDS",
            message: format!(
                "0 with ESCALATE_AFTER={after}: every delivery of an alert would act again at once; give a cooldown, or set ESCALATE_AFTER=0 to switch escalation off"
            ),
        });
    }
    if policy.escalation_window <= policy.cooldown {
        return Err(Error::Config {
            var: "ESCALATION_WINDOW_SECONDS",
            message: format!(
                "{}s is not longer than COOLDOWN_SECONDS={}s: no two actions would fall in one window and ESCALATE_AFTER={after} would never escalate",
                policy.escalation_window.as_secs(),
                policy.cooldown.as_secs()
            ),
        });
    }
    Ok(())
}

/// A lookup that treats empty and blank values as unset.
pub(crate) fn trimmed(lookup: impl Fn(&str) -> Option<String>) -> impl Fn(&str) -> Option<String> {
    move |name: &str| {
        lookup(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }
}

fn split_list(value: &str) -> BTreeSet<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn seconds(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: Duration,
) -> Result<Duration> {
    number(get, var, default.as_secs(), 0).map(Duration::from_secs)
}

fn arn(get: &impl Fn(&str) -> Option<String>, var: &'static str) -> Result<Option<String>> {
    match get(var) {
        None => Ok(None),
        Some(v) if v.starts_with("arn:") && v.split(':').count() >= 6 => Ok(Some(v)),
        Some(v) => Err(Error::Config {
            var,
            message: format!(
                "\"{}\" is not an SNS topic ARN",
                crate::intake::names::printable(&v)
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_are_safe() {
        let cfg = config(&[]).expect("empty environment is valid");
        assert!(cfg.dry_run, "dry run must be the default");
        assert!(cfg.policy.protected_namespaces.contains("kube-system"));
        assert!(cfg.policy.protected_namespaces.contains("istio-system"));
        assert_eq!(cfg.policy.cooldown, Duration::from_secs(900));
        assert!(cfg.clusters.specs.is_empty());
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, value) in [
            ("DRY_RUN", "maybe"),
            ("COOLDOWN_SECONDS", "ten"),
            ("MAX_TARGETS_PER_INVOCATION", "0"),
            ("NOTIFY_TOPIC_ARN", "my-topic"),
            ("PROTECTED_NAMESPACES", "kube-system,Bad/Name"),
            ("CLUSTER_NAME", "a b"),
            ("ISTIO_API_VERSION", "v2"),
            ("SLACK_WEBHOOK_URL", "hooks.slack.com/services/T0/B0/secret"),
        ] {
            let err = config(&[(var, value)]).expect_err("bad value accepted");
            match err {
                Error::Config { var: got, .. } => assert_eq!(got, var),
                other => panic!("{var}: unexpected {other}"),
            }
        }
    }

    #[test]
    fn secrets_never_show_in_debug_or_errors() {
        let cfg = config(&[
            (
                "SLACK_WEBHOOK_URL",
                "https://hooks.slack.com/services/T0/B0/s3cr3t",
            ),
            ("PAGERDUTY_ROUTING_KEY", "pd-s3cr3t"),
        ])
        .expect("valid");
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert_eq!(
            cfg.sinks.pagerduty_routing_key,
            Some(SinkCredential::Value(Secret::new("pd-s3cr3t".into())))
        );
        let err = config(&[("SLACK_WEBHOOK_URL", "hooks.slack.com/s3cr3t")]).expect_err("invalid");
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
    }

    #[test]
    fn values_are_read() {
        let cfg = config(&[
            ("DRY_RUN", "false"),
            ("COOLDOWN_SECONDS", "60"),
            ("ALLOWED_NAMESPACES", "shop, payments"),
            ("CLUSTER_NAME", "prod-eu"),
        ])
        .expect("valid");
        assert!(!cfg.dry_run);
        assert_eq!(cfg.policy.cooldown, Duration::from_secs(60));
        assert_eq!(cfg.policy.allowed_namespaces.len(), 2);
        assert_eq!(cfg.clusters.specs[0].name, "prod-eu");
    }
}
