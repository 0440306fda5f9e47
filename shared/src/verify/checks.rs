//! The Prometheus checks a verification runs: one default set per remediation, matching
//! the shipped rules (`deploy/prometheus/remediation-rules.yml`), templated with the alert's
//! labels, and replaceable per function with `VERIFY_CHECKS`.
//!
//! Every check reads "lower is better" (a latency, an error or timeout ratio, a share of
//! rejected requests), so one verdict rule ([`super::verdict`]) serves all of them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One query and the value it must not exceed once the change helped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Check {
    /// Short name, e.g. `p95_latency_ms`.
    pub name: String,
    /// PromQL with `{{label}}` placeholders (alert labels) and `{{cluster_selector}}`.
    pub query: String,
    /// Recovered when the value is at or below this.
    pub threshold: f64,
    /// Labels the alert must carry for the check to apply (it is left out otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<String>,
}

/// A check with its placeholders filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// The check's name.
    pub name: String,
    /// The PromQL to evaluate.
    pub promql: String,
    /// Its threshold.
    pub threshold: f64,
}

fn check(name: &str, query: &str, threshold: f64, requires: &[&str]) -> Check {
    Check {
        name: name.to_owned(),
        query: query.to_owned(),
        threshold,
        requires: requires.iter().map(|r| (*r).to_owned()).collect(),
    }
}

/// P95 of the requests a Deployment's pods serve (the latency rule's expression, for one
/// workload), in milliseconds; 500 is the rule's threshold.
const WORKLOAD_P95: &str = r#"histogram_quantile(0.95, sum by (le) (rate(istio_request_duration_milliseconds_bucket{reporter="destination", destination_workload="{{deployment}}", destination_workload_namespace="{{namespace}}"{{cluster_selector}}}[5m])))"#;

/// The 5xx ratio of the versions that take the traffic now (every version but the failing
/// one); no 5xx series at all is a ratio of 0, no request at all is no data.
const SERVING_VERSIONS_ERRORS: &str = r#"(sum(rate(istio_requests_total{reporter="destination", destination_service_namespace="{{namespace}}", destination_service_name="{{service}}", destination_version!="{{version}}", response_code=~"5.."{{cluster_selector}}}[5m])) or vector(0)) / sum(rate(istio_requests_total{reporter="destination", destination_service_namespace="{{namespace}}", destination_service_name="{{service}}", destination_version!="{{version}}"{{cluster_selector}}}[5m]))"#;

/// The share of the service's requests the failing version still receives (over one
/// minute, so the rollback shows within the verification delay).
const FAILING_VERSION_SHARE: &str = r#"(sum(rate(istio_requests_total{reporter="destination", destination_service_namespace="{{namespace}}", destination_service_name="{{service}}", destination_version="{{version}}"{{cluster_selector}}}[1m])) or vector(0)) / sum(rate(istio_requests_total{reporter="destination", destination_service_namespace="{{namespace}}", destination_service_name="{{service}}"{{cluster_selector}}}[1m]))"#;

/// The database rule's ratio for the calling app and database.
const DB_TIMEOUTS: &str = r#"(sum(rate(db_client_timeouts_total{namespace="{{namespace}}", app="{{service}}", db="{{db_host}}"{{cluster_selector}}}[5m])) or vector(0)) / sum(rate(db_client_requests_total{namespace="{{namespace}}", app="{{service}}", db="{{db_host}}"{{cluster_selector}}}[5m]))"#;

/// The share of the caller's database requests its own proxy rejects: Envoy's response
/// flags UO (overflow: the connection pool is full) and UH (no healthy upstream: every
/// endpoint ejected). A database spoken to over TCP has no request metrics: the share is
/// then taken over the app's own count of database calls, of which the proxy rejected none.
const BREAKER_REJECTIONS: &str = r#"(sum(rate(istio_requests_total{reporter="source", source_workload_namespace="{{namespace}}", source_app="{{service}}", destination_service_name="{{db_host}}", response_flags=~"UO|UH"{{cluster_selector}}}[5m])) or vector(0)) / (sum(rate(istio_requests_total{reporter="source", source_workload_namespace="{{namespace}}", source_app="{{service}}", destination_service_name="{{db_host}}"{{cluster_selector}}}[5m])) or sum(rate(db_client_requests_total{namespace="{{namespace}}", app="{{service}}", db="{{db_host}}"{{cluster_selector}}}[5m])))"#;

/// The service's 5xx ratio: after a drain every request reaches the regions that took it.
const SERVICE_ERRORS: &str = r#"(sum(rate(istio_requests_total{reporter="destination", destination_service_namespace="{{namespace}}", destination_service_name="{{service}}", response_code=~"5.."{{cluster_selector}}}[5m])) or vector(0)) / sum(rate(istio_requests_total{reporter="destination", destination_service_namespace="{{namespace}}", destination_service_name="{{service}}"{{cluster_selector}}}[5m]))"#;

/// The service's P95 in milliseconds, over the regions that serve it now.
const SERVICE_P95: &str = r#"histogram_quantile(0.95, sum by (le) (rate(istio_request_duration_milliseconds_bucket{reporter="destination", destination_service_namespace="{{namespace}}", destination_service_name="{{service}}"{{cluster_selector}}}[5m])))"#;

/// The default checks of `remediation` (thresholds are the shipped rules').
pub fn defaults(remediation: &str) -> Vec<Check> {
    match remediation {
        "latency-restart" => vec![check("p95_latency_ms", WORKLOAD_P95, 500.0, &[])],
        "error-rollback" => vec![
            check("error_ratio", SERVING_VERSIONS_ERRORS, 0.005, &[]),
            check(
                "failing_version_share",
                FAILING_VERSION_SHARE,
                0.01,
                &["version"],
            ),
        ],
        "db-circuit-break" => vec![
            check("db_timeout_ratio", DB_TIMEOUTS, 0.05, &[]),
            check("breaker_rejected_share", BREAKER_REJECTIONS, 0.05, &[]),
        ],
        "region-failover" => vec![
            check("error_ratio", SERVICE_ERRORS, 0.005, &[]),
            check("p95_latency_ms", SERVICE_P95, 500.0, &[]),
        ],
        _ => Vec::new(),
    }
}

/// Parses `VERIFY_CHECKS`: a JSON list of checks replacing the defaults.
pub fn parse_override(raw: &str) -> Result<Vec<Check>, String> {
    let checks: Vec<Check> =
        serde_json::from_str(raw).map_err(|err| format!("not a JSON list of checks: {err}"))?;
    if checks.is_empty() {
        return Err("an empty list verifies nothing; set VERIFY_AFTER_SECONDS=0 instead".into());
    }
    for check in &checks {
        if check.name.trim().is_empty() || check.query.trim().is_empty() {
            return Err("every check needs a `name` and a `query`".into());
        }
        if !check.threshold.is_finite() {
            return Err(format!(
                "check {}: the threshold is not a number",
                check.name
            ));
        }
    }
    Ok(checks)
}

/// Fills in `checks` for an alert's labels; a check whose required label is missing is
/// left out. `cluster_selector` is `, cluster="<label>"` when `match_cluster` is set and the
/// alert names its cluster (series carry `cluster` on a Prometheus over several clusters),
/// else empty. Label values are escaped for a PromQL string.
pub fn render(
    checks: &[Check],
    labels: &BTreeMap<String, String>,
    match_cluster: bool,
) -> Vec<Query> {
    let cluster_selector = match labels.get("cluster") {
        Some(cluster) if match_cluster => format!(", cluster=\"{}\"", escape(cluster)),
        _ => String::new(),
    };
    checks
        .iter()
        .filter(|c| c.requires.iter().all(|label| labels.contains_key(label)))
        .map(|c| Query {
            name: c.name.clone(),
            promql: fill(&c.query, labels, &cluster_selector),
            threshold: c.threshold,
        })
        .collect()
}

fn fill(template: &str, labels: &BTreeMap<String, String>, cluster_selector: &str) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let name = after[..end].trim();
        if name == "cluster_selector" {
            out.push_str(cluster_selector);
        } else {
            out.push_str(&escape(labels.get(name).map_or("", String::as_str)));
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// A value inside a double-quoted PromQL string.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn every_remediation_has_default_checks_with_the_rules_thresholds() {
        for (remediation, thresholds) in [
            ("latency-restart", vec![500.0]),
            ("error-rollback", vec![0.005, 0.01]),
            ("db-circuit-break", vec![0.05, 0.05]),
            ("region-failover", vec![0.005, 500.0]),
        ] {
            let got: Vec<f64> = defaults(remediation).iter().map(|c| c.threshold).collect();
            assert_eq!(got, thresholds, "{remediation}");
        }
        assert!(defaults("something-else").is_empty());
    }

    #[test]
    fn placeholders_take_the_alerts_labels_escaped() {
        let alert = labels(&[
            ("namespace", "shop"),
            ("service", "checkout"),
            ("version", "v2"),
            ("cluster", "prod\"x"),
        ]);
        let rendered = render(&defaults("error-rollback"), &alert, true);
        assert_eq!(rendered.len(), 2);
        let errors = &rendered[0].promql;
        assert!(
            errors.contains(r#"destination_service_name="checkout""#),
            "{errors}"
        );
        assert!(errors.contains(r#"destination_version!="v2""#), "{errors}");
        assert!(errors.contains(r#", cluster="prod\"x""#), "{errors}");
        assert!(!errors.contains("{{"), "{errors}");
        let unmatched = render(&defaults("error-rollback"), &alert, false);
        assert!(
            !unmatched[0].promql.contains("cluster="),
            "{}",
            unmatched[0].promql
        );
    }

    #[test]
    fn a_check_needing_a_missing_label_is_left_out() {
        let alert = labels(&[("namespace", "shop"), ("service", "checkout")]);
        let rendered = render(&defaults("error-rollback"), &alert, false);
        let names: Vec<&str> = rendered.iter().map(|q| q.name.as_str()).collect();
        assert_eq!(names, ["error_ratio"]);
    }

    #[test]
    fn overrides_are_checked() {
        let ok = parse_override(
            r#"[{"name": "p95", "query": "x{a=\"{{namespace}}\"}", "threshold": 2}]"#,
        )
        .expect("valid");
        assert_eq!(ok[0].threshold, 2.0);
        for bad in [
            "[]",
            "{}",
            r#"[{"name": "", "query": "x", "threshold": 1}]"#,
            r#"[{"name": "a", "query": "x", "threshold": 1, "typo": 1}]"#,
        ] {
            assert!(parse_override(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_unclosed_placeholder_is_kept_verbatim() {
        assert_eq!(fill("a{{b", &BTreeMap::new(), ""), "a{{b");
    }
}
