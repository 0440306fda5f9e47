//! `budget` and `budget reset`: the spending the functions keep in the budget ConfigMap,
//! read with the library's slot type and limits.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use mesh_remediation::cluster::record::FIELD_MANAGER;
use mesh_remediation::guard::budget::{self, BUDGET_CONFIGMAP, Limits, Slot};
use mesh_remediation::intake::KNOWN_REMEDIATIONS;
use serde::Serialize;
use serde_json::json;

use crate::contexts::Context;
use crate::error::{Call, OpError};
use crate::output::Tabular;

/// One budget's spending in one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BudgetRow {
    /// The kubeconfig context (the cluster).
    pub context: String,
    /// A function, or `(cluster)` for all of them together.
    pub budget: String,
    /// Changes within the window.
    pub used: usize,
    /// The limit (`0`: off).
    pub limit: usize,
    /// When the oldest change leaves the window, freeing a slot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_free: Option<DateTime<Utc>>,
    /// Why the entry cannot be read (the functions fail while it stays so).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
}

impl Tabular for BudgetRow {
    fn headers() -> &'static [&'static str] {
        &["CONTEXT", "BUDGET", "USED", "LIMIT", "NEXT SLOT FREES AT"]
    }

    fn cells(&self) -> Vec<String> {
        let limit = match self.limit {
            0 => "off".to_owned(),
            n => n.to_string(),
        };
        let free = match (&self.unreadable, self.next_free) {
            (Some(why), _) => format!("unreadable: {why}"),
            (None, Some(at)) => at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            (None, None) => "-".to_owned(),
        };
        vec![
            self.context.clone(),
            self.budget.clone(),
            self.used.to_string(),
            limit,
            free,
        ]
    }
}

/// The spending in `data` at `now`: one row per function (every known one, and any other
/// key found) and one for the cluster.
pub fn rows(
    context: &str,
    data: &BTreeMap<String, String>,
    limits: &Limits,
    now: DateTime<Utc>,
) -> Vec<BudgetRow> {
    let window = chrono::Duration::from_std(limits.window).unwrap_or(chrono::Duration::MAX);
    let frees = |slots: &[Slot]| {
        slots
            .iter()
            .map(|s| s.at)
            .min()
            .and_then(|at| at.checked_add_signed(window))
    };
    let mut spent = budget::spending(data, limits, now);
    let mut keys: Vec<String> = KNOWN_REMEDIATIONS.iter().map(|k| (*k).to_owned()).collect();
    let others: Vec<String> = spent
        .keys()
        .filter(|k| !keys.contains(k))
        .cloned()
        .collect();
    keys.extend(others);
    let mut all = Vec::new();
    let mut rows = Vec::new();
    for key in keys {
        let (live, unreadable) = match spent.remove(&key) {
            None => (Vec::new(), None),
            Some(Ok(slots)) => (slots, None),
            Some(Err(why)) => (Vec::new(), Some(why)),
        };
        rows.push(BudgetRow {
            context: context.to_owned(),
            budget: key,
            used: live.len(),
            limit: limits.per_function,
            next_free: frees(&live),
            unreadable,
        });
        all.extend(live);
    }
    rows.push(BudgetRow {
        context: context.to_owned(),
        budget: "(cluster)".to_owned(),
        used: all.len(),
        limit: limits.cluster,
        next_free: frees(&all),
        unreadable: None,
    });
    rows
}

fn call<'a>(context: &'a Context, verb: &'static str, limits: &Limits) -> Call<'a> {
    Call {
        context: &context.name,
        verb,
        object: format!("configmap {}/{BUDGET_CONFIGMAP}", limits.namespace),
    }
}

/// The spending in one cluster.
pub async fn show(context: &Context, limits: &Limits) -> Result<Vec<BudgetRow>, OpError> {
    let api: Api<ConfigMap> = Api::namespaced(context.client.clone(), &limits.namespace);
    let map = api
        .get(BUDGET_CONFIGMAP)
        .await
        .map_err(|err| call(context, "get", limits).failed(err))?;
    Ok(rows(
        &context.name,
        &map.data.unwrap_or_default(),
        limits,
        Utc::now(),
    ))
}

/// Empties `function`'s key, guarded by the ConfigMap's `resourceVersion` as the functions
/// write it (a slot taken meanwhile makes the reset fail rather than vanish unseen).
pub async fn reset(context: &Context, limits: &Limits, function: &str) -> Result<(), OpError> {
    if !KNOWN_REMEDIATIONS.contains(&function) {
        return Err(OpError::Usage(format!(
            "unknown function {function:?} (expected one of: {})",
            KNOWN_REMEDIATIONS.join(", ")
        )));
    }
    let api: Api<ConfigMap> = Api::namespaced(context.client.clone(), &limits.namespace);
    let map = api
        .get(BUDGET_CONFIGMAP)
        .await
        .map_err(|err| call(context, "get", limits).failed(err))?;
    let body = json!({
        "metadata": {"resourceVersion": map.metadata.resource_version},
        "data": {function: "[]"},
    });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    api.patch(BUDGET_CONFIGMAP, &params, &Patch::Merge(&body))
        .await
        .map_err(|err| call(context, "patch", limits).failed(err))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 4, 12, minute, 0)
            .single()
            .expect("time")
    }

    #[test]
    fn spending_counts_the_window_and_says_when_a_slot_frees() {
        let slot = |minute| Slot {
            at: at(minute),
            target: "Deployment shop/x".into(),
            trace_id: "t".into(),
        };
        let data = BTreeMap::from([
            (
                "latency-restart".to_owned(),
                serde_json::to_string(&vec![slot(1), slot(20), slot(30)]).expect("json"),
            ),
            ("error-rollback".to_owned(), "not json".to_owned()),
        ]);
        let limits = Limits {
            window: std::time::Duration::from_secs(1800),
            per_function: 2,
            cluster: 0,
            namespace: "kube-system".into(),
        };
        let rows = rows("use1", &data, &limits, at(40));
        let restart = &rows[0];
        assert_eq!(
            (restart.budget.as_str(), restart.used),
            ("latency-restart", 2)
        );
        assert_eq!(restart.next_free, Some(at(50)), "12:20 + 30 minutes");
        let rollback = &rows[1];
        assert!(rollback.unreadable.is_some(), "{rollback:?}");
        let cluster = rows.last().expect("cluster row");
        assert_eq!((cluster.budget.as_str(), cluster.used), ("(cluster)", 2));
        assert_eq!(cluster.cells()[3], "off");
    }
}
