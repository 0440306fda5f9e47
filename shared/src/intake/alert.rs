//! Alertmanager's webhook-v4 payload, the body of every SNS message the functions accept.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Labels or annotations of an alert.
pub type KeyValues = BTreeMap<String, String>;

/// One Alertmanager notification for a group of alerts (webhook payload version 4).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertGroup {
    /// Payload version; only `"4"` is understood.
    pub version: String,
    /// Identifies the alert group in Alertmanager.
    #[serde(default)]
    pub group_key: Option<String>,
    /// How many alerts the template left out to stay under the SNS size limit.
    #[serde(default)]
    pub truncated_alerts: u64,
    /// `firing` if any alert of the group fires, else `resolved`.
    pub status: AlertStatus,
    /// The Alertmanager receiver that sent it.
    #[serde(default)]
    pub receiver: String,
    /// Labels the group is keyed on.
    #[serde(default)]
    pub group_labels: KeyValues,
    /// Labels every alert of the group shares.
    #[serde(default)]
    pub common_labels: KeyValues,
    /// Annotations every alert of the group shares.
    #[serde(default)]
    pub common_annotations: KeyValues,
    /// Link back to the Alertmanager that sent it.
    #[serde(default, rename = "externalURL")]
    pub external_url: Option<String>,
    /// The alerts themselves.
    pub alerts: Vec<Alert>,
}

/// Whether an alert is firing or resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    /// The condition holds.
    Firing,
    /// The condition no longer holds.
    Resolved,
}

/// One alert as Alertmanager reports it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// Firing or resolved.
    pub status: AlertStatus,
    /// Identifying labels; the remediation contract lives here.
    #[serde(default)]
    pub labels: KeyValues,
    /// Descriptive annotations.
    #[serde(default)]
    pub annotations: KeyValues,
    /// When the alert started firing.
    pub starts_at: DateTime<Utc>,
    /// When it ended; Alertmanager sends year 1 (`0001-01-01T00:00:00Z`) while it fires.
    #[serde(default)]
    pub ends_at: Option<DateTime<Utc>>,
    /// Link to the Prometheus expression that fired.
    #[serde(default, rename = "generatorURL")]
    pub generator_url: Option<String>,
    /// Alertmanager's stable identity of the alert (hash of its labels).
    pub fingerprint: String,
}

impl Alert {
    /// The value of a label, if present and not empty.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// A label that is `"true"` (case-insensitive) turns a flag on.
    pub fn flag(&self, name: &str) -> bool {
        self.label(name)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }

    /// The alert's name, for reports.
    pub fn name(&self) -> &str {
        self.label("alertname").unwrap_or("<unnamed>")
    }

    /// The end time, if it is a real one (Alertmanager's zero time means "still firing").
    pub fn real_end(&self) -> Option<DateTime<Utc>> {
        self.ends_at.filter(|t| t.timestamp() > 0)
    }
}
