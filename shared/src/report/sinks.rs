//! Configuration of the direct report sinks (Slack, PagerDuty, Grafana annotations) and
//! their credentials.
//!
//! In AWS a credential lives in Secrets Manager and the function is told only the secret's
//! ARN (`SLACK_WEBHOOK_SECRET_ARN`, `PAGERDUTY_ROUTING_KEY_SECRET_ARN`,
//! `GRAFANA_TOKEN_SECRET_ARN`): it is read on first use ([`super::secrets`]). Local runs
//! give the value itself (`SLACK_WEBHOOK_URL`, `PAGERDUTY_ROUTING_KEY`, `GRAFANA_TOKEN`). Values never reach a log line or an error: their `Debug` is
//! redacted and a malformed one is described, not echoed.

use std::time::Duration;

use crate::error::{Error, Result};

/// The PagerDuty Events API v2 endpoint, the default of `PAGERDUTY_EVENTS_URL`.
pub const PAGERDUTY_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// A secret from configuration: usable, but never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: String) -> Self {
        Secret(value)
    }
    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Where a sink's credential comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkCredential {
    /// The value itself, from the environment (local runs).
    Value(Secret),
    /// A Secrets Manager secret holding the value as a plain secret string.
    Stored {
        /// The secret's ARN.
        arn: String,
        /// The variable that named it, for error messages.
        var: &'static str,
    },
}

/// What a sink's credential is, so a value read from the store is checked like one from
/// the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// A Slack incoming-webhook URL.
    SlackWebhook,
    /// A PagerDuty Events API v2 routing (integration) key.
    PagerDutyRoutingKey,
    /// A Grafana service account token (or API key) allowed to write annotations.
    GrafanaToken,
}

impl CredentialKind {
    /// Checks a value without ever repeating it; `Err` says what is wrong.
    pub fn check(self, value: &str) -> std::result::Result<(), String> {
        if value.starts_with('{') {
            return Err("holds a JSON object; store the bare value as the secret string (plaintext), not key/value pairs".into());
        }
        match self {
            CredentialKind::SlackWebhook if !is_http_url(value) => {
                Err("is not an http(s) URL (value not shown: it is a secret)".into())
            }
            CredentialKind::PagerDutyRoutingKey | CredentialKind::GrafanaToken
                if value.chars().any(char::is_whitespace) =>
            {
                Err(
                    "contains whitespace, which no key or token does (value not shown: it is a secret)"
                        .into(),
                )
            }
            _ => Ok(()),
        }
    }
}

/// Optional direct sinks for reports besides the SNS topic.
#[derive(Debug, Clone)]
pub struct Sinks {
    /// Slack incoming webhook: `SLACK_WEBHOOK_SECRET_ARN` or `SLACK_WEBHOOK_URL`.
    pub slack_webhook: Option<SinkCredential>,
    /// PagerDuty Events API v2 integration key: `PAGERDUTY_ROUTING_KEY_SECRET_ARN` or
    /// `PAGERDUTY_ROUTING_KEY`.
    pub pagerduty_routing_key: Option<SinkCredential>,
    /// `PAGERDUTY_EVENTS_URL`: the Events API endpoint (default PagerDuty's).
    pub pagerduty_events_url: String,
    /// Grafana annotations: `GRAFANA_URL` with its token.
    pub grafana: Option<GrafanaSink>,
    /// `NOTIFY_TIMEOUT_MS`: time each sink gets (default 3000).
    pub timeout: Duration,
}

/// Where annotations go: a Grafana (or Amazon Managed Grafana workspace) and a token of a
/// service account with the Editor role (or `annotations:write`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrafanaSink {
    /// `GRAFANA_URL`: the Grafana's base URL, e.g. `https://g-abc.grafana-workspace.us-east-1.amazonaws.com`.
    pub url: String,
    /// `GRAFANA_TOKEN_SECRET_ARN` or `GRAFANA_TOKEN`.
    pub token: SinkCredential,
    /// `GRAFANA_DASHBOARD_UID`: the annotations belong to this dashboard only; unset, they
    /// are the organization's, shown by any dashboard that asks for their tag.
    pub dashboard_uid: Option<String>,
}

impl Sinks {
    /// Reads the sink settings through `get` (blank values already count as unset); each
    /// sink is given `timeout` (`NOTIFY_TIMEOUT_MS`, read with the rest of the configuration).
    pub(crate) fn from_lookup(
        get: &impl Fn(&str) -> Option<String>,
        timeout: Duration,
    ) -> Result<Self> {
        let slack_webhook = credential(
            get,
            "SLACK_WEBHOOK_SECRET_ARN",
            "SLACK_WEBHOOK_URL",
            CredentialKind::SlackWebhook,
        )?;
        let pagerduty_routing_key = credential(
            get,
            "PAGERDUTY_ROUTING_KEY_SECRET_ARN",
            "PAGERDUTY_ROUTING_KEY",
            CredentialKind::PagerDutyRoutingKey,
        )?;
        let pagerduty_events_url = match get("PAGERDUTY_EVENTS_URL") {
            None => PAGERDUTY_EVENTS_URL.to_owned(),
            Some(url) if is_http_url(&url) => url,
            Some(_) => {
                return Err(Error::Config {
                    var: "PAGERDUTY_EVENTS_URL",
                    message: "is not an http(s) URL".into(),
                });
            }
        };
        Ok(Sinks {
            slack_webhook,
            pagerduty_routing_key,
            pagerduty_events_url,
            grafana: grafana(get)?,
            timeout,
        })
    }
}

/// The Grafana sink: a URL and a token together, or neither.
fn grafana(get: &impl Fn(&str) -> Option<String>) -> Result<Option<GrafanaSink>> {
    let token = credential(
        get,
        "GRAFANA_TOKEN_SECRET_ARN",
        "GRAFANA_TOKEN",
        CredentialKind::GrafanaToken,
    )?;
    let dashboard_uid = get("GRAFANA_DASHBOARD_UID");
    let url = match get("GRAFANA_URL") {
        Some(url) if !is_http_url(&url) => {
            return Err(Error::Config {
                var: "GRAFANA_URL",
                message: "is not an http(s) URL".into(),
            });
        }
        url => url.map(|u| u.trim_end_matches('/').to_owned()),
    };
    match (url, token) {
        (Some(url), Some(token)) => Ok(Some(GrafanaSink {
            url,
            token,
            dashboard_uid,
        })),
        (None, None) if dashboard_uid.is_none() => Ok(None),
        (None, _) => Err(Error::Config {
            var: "GRAFANA_URL",
            message: "is not set, but a Grafana token or dashboard is; set the Grafana's URL or remove them".into(),
        }),
        (Some(_), None) => Err(Error::Config {
            var: "GRAFANA_TOKEN_SECRET_ARN",
            message: "is not set (nor GRAFANA_TOKEN for local runs): annotations need a service account token".into(),
        }),
    }
}

/// One credential: the secret's ARN, or the value itself, never both (which of two
/// sources wins would be a guess).
fn credential(
    get: &impl Fn(&str) -> Option<String>,
    arn_var: &'static str,
    value_var: &'static str,
    kind: CredentialKind,
) -> Result<Option<SinkCredential>> {
    match (get(arn_var), get(value_var)) {
        (Some(_), Some(_)) => Err(Error::Config {
            var: arn_var,
            message: format!(
                "set together with {value_var}; keep one: the secret's ARN in AWS, the value for local runs"
            ),
        }),
        (Some(arn), None) => {
            secret_arn(&arn).map_err(|message| Error::Config {
                var: arn_var,
                message,
            })?;
            Ok(Some(SinkCredential::Stored { arn, var: arn_var }))
        }
        (None, Some(value)) => {
            kind.check(&value).map_err(|message| Error::Config {
                var: value_var,
                message,
            })?;
            Ok(Some(SinkCredential::Value(Secret::new(value))))
        }
        (None, None) => Ok(None),
    }
}

/// `arn:<partition>:secretsmanager:<region>:<account>:secret:<name>`. The full ARN (with the
/// six-character suffix Secrets Manager appends) is what the IAM policy grants.
fn secret_arn(arn: &str) -> std::result::Result<(), String> {
    let parts: Vec<&str> = arn.splitn(7, ':').collect();
    match parts.as_slice() {
        [
            "arn",
            partition,
            "secretsmanager",
            region,
            account,
            "secret",
            name,
        ] if !partition.is_empty()
            && !region.is_empty()
            && account.len() == 12
            && account.bytes().all(|b| b.is_ascii_digit())
            && !name.is_empty() =>
        {
            Ok(())
        }
        _ => Err(format!(
            "\"{}\" is not a Secrets Manager secret ARN (arn:aws:secretsmanager:<region>:<account>:secret:<name>)",
            crate::intake::names::printable(arn)
        )),
    }
}

fn is_http_url(value: &str) -> bool {
    value.starts_with("https://") || value.starts_with("http://")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const ARN: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:mesh/slack-AbCdEf";

    fn sinks(vars: &[(&str, &str)]) -> Result<Sinks> {
        let map: HashMap<&str, &str> = vars.iter().copied().collect();
        let timeout = Duration::from_secs(3);
        Sinks::from_lookup(&|k: &str| map.get(k).map(|v| (*v).to_owned()), timeout)
    }

    fn rejected_var(vars: &[(&str, &str)]) -> (&'static str, String) {
        match sinks(vars) {
            Err(Error::Config { var, message }) => (var, message),
            other => panic!("{vars:?}: expected a configuration error, got {other:?}"),
        }
    }

    #[test]
    fn a_secret_arn_names_the_secret_and_the_value_stays_for_local_runs() {
        let stored = sinks(&[
            ("SLACK_WEBHOOK_SECRET_ARN", ARN),
            ("PAGERDUTY_ROUTING_KEY", "pd-key"),
        ])
        .expect("valid");
        assert_eq!(
            stored.slack_webhook,
            Some(SinkCredential::Stored {
                arn: ARN.into(),
                var: "SLACK_WEBHOOK_SECRET_ARN"
            })
        );
        assert_eq!(
            stored.pagerduty_routing_key,
            Some(SinkCredential::Value(Secret::new("pd-key".into())))
        );
        let none = sinks(&[]).expect("valid");
        assert!(none.slack_webhook.is_none() && none.pagerduty_routing_key.is_none());
        assert_eq!(none.pagerduty_events_url, PAGERDUTY_EVENTS_URL);
    }

    #[test]
    fn an_arn_and_a_value_for_one_sink_are_refused() {
        let (var, message) = rejected_var(&[
            ("PAGERDUTY_ROUTING_KEY_SECRET_ARN", ARN),
            ("PAGERDUTY_ROUTING_KEY", "pd-s3cr3t"),
        ]);
        assert_eq!(var, "PAGERDUTY_ROUTING_KEY_SECRET_ARN");
        assert!(message.contains("PAGERDUTY_ROUTING_KEY"), "{message}");
        assert!(!message.contains("s3cr3t"), "{message}");
    }

    #[test]
    fn malformed_arns_and_values_name_their_variable_and_never_echo_a_secret() {
        for arn in [
            "slack-webhook",
            "arn:aws:ssm:us-east-1:123456789012:parameter/slack",
            "arn:aws:secretsmanager:us-east-1:1234:secret:slack",
            "arn:aws:secretsmanager:us-east-1:123456789012:secret:",
        ] {
            let (var, _) = rejected_var(&[("SLACK_WEBHOOK_SECRET_ARN", arn)]);
            assert_eq!(var, "SLACK_WEBHOOK_SECRET_ARN", "{arn}");
        }
        let (var, message) = rejected_var(&[("SLACK_WEBHOOK_URL", "hooks.slack.com/s3cr3t")]);
        assert_eq!(var, "SLACK_WEBHOOK_URL");
        assert!(!message.contains("s3cr3t"), "{message}");
        let (var, _) = rejected_var(&[("PAGERDUTY_EVENTS_URL", "events.pagerduty.com")]);
        assert_eq!(var, "PAGERDUTY_EVENTS_URL");
    }

    #[test]
    fn grafana_needs_its_url_and_its_token_together() {
        let stored = sinks(&[
            ("GRAFANA_URL", "https://grafana.example/"),
            ("GRAFANA_TOKEN_SECRET_ARN", ARN),
            ("GRAFANA_DASHBOARD_UID", "mesh-remediation"),
        ])
        .expect("valid");
        assert_eq!(
            stored.grafana,
            Some(GrafanaSink {
                url: "https://grafana.example".into(),
                token: SinkCredential::Stored {
                    arn: ARN.into(),
                    var: "GRAFANA_TOKEN_SECRET_ARN"
                },
                dashboard_uid: Some("mesh-remediation".into()),
            })
        );
        assert_eq!(sinks(&[]).expect("valid").grafana, None);
        let (var, _) = rejected_var(&[("GRAFANA_URL", "https://grafana.example")]);
        assert_eq!(var, "GRAFANA_TOKEN_SECRET_ARN");
        let (var, message) = rejected_var(&[("GRAFANA_TOKEN", "glsa_s3cr3t")]);
        assert_eq!(var, "GRAFANA_URL");
        assert!(!message.contains("s3cr3t"), "{message}");
        let (var, _) = rejected_var(&[("GRAFANA_DASHBOARD_UID", "mesh-remediation")]);
        assert_eq!(var, "GRAFANA_URL");
        let (var, _) = rejected_var(&[("GRAFANA_URL", "grafana.example"), ("GRAFANA_TOKEN", "t")]);
        assert_eq!(var, "GRAFANA_URL");
    }

    #[test]
    fn stored_values_are_checked_like_environment_values() {
        let slack = CredentialKind::SlackWebhook;
        let pagerduty = CredentialKind::PagerDutyRoutingKey;
        assert!(
            slack
                .check("https://hooks.slack.com/services/T0/B0/x")
                .is_ok()
        );
        assert!(pagerduty.check("0123456789abcdef0123456789abcdef").is_ok());
        for (kind, value) in [
            (slack, "hooks.slack.com/services/T0/B0/s3cr3t"),
            (slack, "{\"url\":\"https://hooks.slack.com/s3cr3t\"}"),
            (pagerduty, "{\"routing_key\":\"s3cr3t\"}"),
            (pagerduty, "s3cr3t s3cr3t"),
            (CredentialKind::GrafanaToken, "glsa_s3cr3t\n"),
            (CredentialKind::GrafanaToken, "{\"token\":\"glsa_s3cr3t\"}"),
        ] {
            let message = kind.check(value).expect_err(value);
            assert!(!message.contains("s3cr3t"), "{message}");
        }
    }
}
