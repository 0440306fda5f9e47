//! Action budgets that hold across invocations and functions: at most
//! `MAX_ACTIONS_PER_WINDOW` changes per function and `MAX_CLUSTER_ACTIONS_PER_WINDOW` changes
//! by all functions together within `BUDGET_WINDOW_SECONDS`.
//!
//! The spending is kept in the cluster, in the ConfigMap [`BUDGET_CONFIGMAP`] (in
//! `BUDGET_NAMESPACE`, default `kube-system`): one data key per function, each a JSON list of
//! the changes it made within the window. A slot is taken by a merge patch carrying the
//! ConfigMap's `resourceVersion`, so two invocations that read the same spending cannot both
//! take the last slot: one gets 409, reads again and counts the other's slot. One object holds
//! every function's key, so the cluster-wide count and the function's own are taken in the
//! same write. A slot is taken just before a change is written and given back when the change
//! did not land. The targets of one invocation take their slots together (`pipeline/slots.rs`).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::{Error, Result};
use crate::guard::skip::SkipReason;

/// The ConfigMap holding the spending (created by `deploy/rbac.yaml`).
pub const BUDGET_CONFIGMAP: &str = "mesh-remediation-budget";

/// Writes refused with 409 before giving up: every invocation of every function writes this
/// one object, so under a burst it is contended; each refusal means another took a slot.
const MAX_ATTEMPTS: u32 = 24;

/// The limits in force (`0` switches one off).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// `BUDGET_WINDOW_SECONDS`: the rolling window (default 3600).
    pub window: Duration,
    /// `MAX_ACTIONS_PER_WINDOW`: changes by this function per window (default 20).
    pub per_function: usize,
    /// `MAX_CLUSTER_ACTIONS_PER_WINDOW`: changes by all functions per window (default 40).
    pub cluster: usize,
    /// `BUDGET_NAMESPACE`: where [`BUDGET_CONFIGMAP`] lives (default `kube-system`).
    pub namespace: String,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            window: Duration::from_secs(3600),
            per_function: 20,
            cluster: 40,
            namespace: "kube-system".into(),
        }
    }
}

impl Limits {
    /// Whether any budget applies (else the ConfigMap is never read).
    pub fn enabled(&self) -> bool {
        self.per_function > 0 || self.cluster > 0
    }
}

/// One change counted against the budgets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    /// When it was taken.
    pub at: DateTime<Utc>,
    /// The object changed, e.g. `Deployment shop/checkout-v2`.
    pub target: String,
    /// The invocation's trace id.
    pub trace_id: String,
}

/// What a budget allows of a batch of changes asked for together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The new list for the function's key (its slots within the window plus the granted
    /// ones), or `None` when nothing is granted and nothing needs writing.
    pub list: Option<String>,
    /// How many of the slots asked for are granted: the first ones, in the order given.
    pub granted: usize,
    /// Why the others are not.
    pub refused: Option<SkipReason>,
}

/// Decides on `slots` more changes by `function` given the spending in `data`: the first
/// ones fit the budgets, the rest are refused with the limit that stops them. `Err` when
/// the stored spending cannot be read: a person must repair it, and counting an unreadable
/// entry as anything would either invent spending or grant an unlimited budget.
pub fn take(
    data: &BTreeMap<String, String>,
    function: &str,
    limits: &Limits,
    slots: &[Slot],
) -> Result<Grant> {
    let Some(now) = slots.iter().map(|s| s.at).max() else {
        return Ok(Grant {
            list: None,
            granted: 0,
            refused: None,
        });
    };
    let window = chrono::Duration::from_std(limits.window).unwrap_or(chrono::Duration::MAX);
    let since = now
        .checked_sub_signed(window)
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let mut live: BTreeMap<&str, Vec<Slot>> = BTreeMap::new();
    for (key, raw) in data {
        let stored: Vec<Slot> = serde_json::from_str(raw).map_err(|err| {
            Error::Plan(format!(
                "budget entry {key:?} in {} is not a list of slots ({err}); repair or delete that key",
                describe(limits)
            ))
        })?;
        live.insert(key, stored.into_iter().filter(|s| s.at > since).collect());
    }
    let mut own = live.remove(function).unwrap_or_default();
    let others: usize = live.values().map(Vec::len).sum();
    let room = |limit: usize, used: usize| match limit {
        0 => usize::MAX,
        limit => limit.saturating_sub(used),
    };
    let own_room = room(limits.per_function, own.len());
    let cluster_room = room(limits.cluster, own.len() + others);
    let granted = slots.len().min(own_room).min(cluster_room);
    own.extend_from_slice(&slots[..granted]);
    let seconds = limits.window.as_secs();
    let refused = (granted < slots.len()).then(|| {
        if own_room <= cluster_room {
            SkipReason::BudgetSpent(format!(
                "{function} already made {} changes in the last {seconds}s (MAX_ACTIONS_PER_WINDOW={}); the oldest leaves the window at {}",
                own.len(),
                limits.per_function,
                leaves_window(own.iter(), window)
            ))
        } else {
            let all = own.iter().chain(live.values().flatten());
            SkipReason::BudgetSpent(format!(
                "the functions already made {} changes in this cluster in the last {seconds}s (MAX_CLUSTER_ACTIONS_PER_WINDOW={}); the oldest leaves the window at {}",
                own.len() + others,
                limits.cluster,
                leaves_window(all, window)
            ))
        }
    });
    let list = (granted > 0).then(|| serde_json::to_string(&own).unwrap_or_else(|_| "[]".into()));
    Ok(Grant {
        list,
        granted,
        refused,
    })
}

fn leaves_window<'a>(slots: impl Iterator<Item = &'a Slot>, window: chrono::Duration) -> String {
    slots
        .map(|s| s.at)
        .min()
        .and_then(|at| at.checked_add_signed(window))
        .map_or_else(|| "an unknown time".into(), |at| at.to_rfc3339())
}

/// The function's list with `slots` given back.
pub fn give_back(
    data: &BTreeMap<String, String>,
    function: &str,
    slots: &[Slot],
) -> Option<String> {
    let mut own: Vec<Slot> = serde_json::from_str(data.get(function)?).ok()?;
    let before = own.len();
    own.retain(|s| !slots.contains(s));
    (own.len() != before).then(|| serde_json::to_string(&own).unwrap_or_else(|_| "[]".into()))
}

/// Takes `slots` for `function` in the cluster's budget in one guarded write (more only
/// when another invocation wrote in between): the first ones the budgets allow are taken.
/// `Err` when the budget cannot be read or written (nothing is changed then).
pub async fn reserve(
    client: &kube::Client,
    limits: &Limits,
    function: &str,
    slots: &[Slot],
) -> Result<Grant> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &limits.namespace);
    for attempt in 0..MAX_ATTEMPTS {
        let (data, version) = read(&api, limits).await?;
        let grant = take(&data, function, limits, slots)?;
        let Some(list) = &grant.list else {
            return Ok(grant);
        };
        match write(&api, function, list, version).await {
            Ok(()) => return Ok(grant),
            Err(kube::Error::Api(status)) if status.code == 409 => {
                tokio::time::sleep(contention_backoff(attempt)).await;
            }
            Err(err) => return Err(Error::kube(format!("update {}", describe(limits)), err)),
        }
    }
    Err(Error::ConflictStorm {
        target: describe(limits),
        attempts: MAX_ATTEMPTS,
    })
}

/// Gives a slot back after a change that did not land. Best effort: a slot that cannot be
/// given back stays spent until it leaves the window, which errs on the safe side.
pub async fn release(client: &kube::Client, limits: &Limits, function: &str, slot: &Slot) {
    release_all(client, limits, function, std::slice::from_ref(slot)).await;
}

/// Gives several slots back in one guarded write, as [`release`] does one.
pub async fn release_all(client: &kube::Client, limits: &Limits, function: &str, slots: &[Slot]) {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &limits.namespace);
    for attempt in 0..MAX_ATTEMPTS {
        let Ok((data, version)) = read(&api, limits).await else {
            break;
        };
        let Some(list) = give_back(&data, function, slots) else {
            return;
        };
        match write(&api, function, &list, version).await {
            Ok(()) => return,
            Err(kube::Error::Api(status)) if status.code == 409 => {
                tokio::time::sleep(contention_backoff(attempt)).await;
            }
            Err(_) => break,
        }
    }
    for slot in slots {
        tracing::warn!(
            trace_id = %slot.trace_id,
            target = %slot.target,
            "could not give back a budget slot; it stays spent until it leaves the window"
        );
    }
}

fn describe(limits: &Limits) -> String {
    format!(
        "configmap {}/{BUDGET_CONFIGMAP} (the action budgets)",
        limits.namespace
    )
}

async fn read(
    api: &Api<ConfigMap>,
    limits: &Limits,
) -> Result<(BTreeMap<String, String>, Option<String>)> {
    match api.get_opt(BUDGET_CONFIGMAP).await {
        Ok(Some(map)) => Ok((map.data.unwrap_or_default(), map.metadata.resource_version)),
        Ok(None) => Err(Error::Plan(format!(
            "{} does not exist: apply deploy/rbac.yaml, which creates it, or set MAX_ACTIONS_PER_WINDOW=0 and MAX_CLUSTER_ACTIONS_PER_WINDOW=0 to run without budgets",
            describe(limits)
        ))),
        Err(err) => Err(Error::kube(format!("get {}", describe(limits)), err)),
    }
}

async fn write(
    api: &Api<ConfigMap>,
    function: &str,
    list: &str,
    version: Option<String>,
) -> std::result::Result<(), kube::Error> {
    let body = json!({"metadata": {"resourceVersion": version}, "data": {function: list}});
    let params = PatchParams {
        field_manager: Some(crate::cluster::record::FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    }
    .validation_strict();
    api.patch(BUDGET_CONFIGMAP, &params, &Patch::Merge(&body))
        .await
        .map(|_| ())
}

/// 5 to 40 ms plus jitter: a slot write is one small request, so contenders are soon done.
fn contention_backoff(attempt: u32) -> Duration {
    let base = 5u64 << attempt.min(3);
    crate::backoff::jittered(base, base * 2)
}

/// The spending in `data` at `now`, as [`take`] counts it: per key, the slots within the
/// window, or why the entry cannot be read. For showing a person (`kubectl mesh-remediation
/// budget`) what the functions see.
pub fn spending(
    data: &BTreeMap<String, String>,
    limits: &Limits,
    now: DateTime<Utc>,
) -> BTreeMap<String, std::result::Result<Vec<Slot>, String>> {
    let window = chrono::Duration::from_std(limits.window).unwrap_or(chrono::Duration::MAX);
    let since = now
        .checked_sub_signed(window)
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    data.iter()
        .map(|(key, raw)| {
            let live = serde_json::from_str::<Vec<Slot>>(raw)
                .map(|stored| stored.into_iter().filter(|s| s.at > since).collect())
                .map_err(|err| format!("not a list of slots ({err}); repair or delete that key"));
            (key.clone(), live)
        })
        .collect()
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

    fn slot(minute: u32, target: &str) -> Slot {
        Slot {
            at: at(minute),
            target: target.into(),
            trace_id: "t".into(),
        }
    }

    fn limits(per_function: usize, cluster: usize) -> Limits {
        Limits {
            window: Duration::from_secs(600),
            per_function,
            cluster,
            namespace: "kube-system".into(),
        }
    }

    fn data(entries: &[(&str, Vec<Slot>)]) -> BTreeMap<String, String> {
        entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::to_string(v).expect("json")))
            .collect()
    }

    fn taken(grant: &Grant) -> Vec<Slot> {
        serde_json::from_str(grant.list.as_deref().expect("a list")).expect("list")
    }

    fn refusal(grant: &Grant) -> String {
        grant.refused.as_ref().expect("refused").to_string()
    }

    #[test]
    fn a_function_budget_counts_its_own_changes_in_the_window() {
        let spent = data(&[("latency-restart", vec![slot(1, "a"), slot(9, "b")])]);
        let grant = take(&spent, "latency-restart", &limits(2, 0), &[slot(10, "c")]).expect("read");
        assert_eq!((grant.granted, grant.list.as_deref()), (0, None));
        let text = refusal(&grant);
        assert!(text.contains("MAX_ACTIONS_PER_WINDOW=2"), "{text}");
        assert!(text.contains("already made 2 changes"), "{text}");
        assert!(
            text.contains("12:11:00"),
            "the oldest leaves at 12:11: {text}"
        );
        // Eleven minutes on, the first slot has left the 10-minute window; it is pruned.
        let grant = take(&spent, "latency-restart", &limits(2, 0), &[slot(12, "c")]).expect("read");
        assert_eq!((grant.granted, &grant.refused), (1, &None));
        assert_eq!(taken(&grant), vec![slot(9, "b"), slot(12, "c")]);
        // Another function's budget is its own.
        let grant = take(&spent, "error-rollback", &limits(2, 0), &[slot(10, "c")]).expect("read");
        assert_eq!(grant.granted, 1);
    }

    #[test]
    fn the_cluster_budget_counts_every_function() {
        let spent = data(&[
            ("latency-restart", vec![slot(1, "a")]),
            ("error-rollback", vec![slot(2, "b"), slot(3, "c")]),
        ]);
        let grant = take(&spent, "region-failover", &limits(5, 3), &[slot(4, "d")]).expect("read");
        assert_eq!(grant.granted, 0);
        assert!(refusal(&grant).contains("MAX_CLUSTER_ACTIONS_PER_WINDOW=3"));
        assert!(
            grant
                .refused
                .as_ref()
                .is_some_and(SkipReason::needs_a_person)
        );
        let free = |limits: Limits| take(&spent, "region-failover", &limits, &[slot(4, "d")]);
        assert_eq!(free(limits(5, 4)).expect("read").granted, 1);
        assert_eq!(free(limits(5, 0)).expect("read").granted, 1);
    }

    #[test]
    fn a_batch_takes_what_fits_in_order_and_names_the_limit_that_stops_the_rest() {
        let spent = data(&[
            ("latency-restart", vec![slot(1, "a")]),
            ("error-rollback", vec![slot(2, "b")]),
        ]);
        let batch = [slot(5, "c"), slot(5, "d"), slot(5, "e"), slot(5, "f")];
        // The function's own budget (3) binds first: two more fit.
        let grant = take(&spent, "latency-restart", &limits(3, 10), &batch).expect("read");
        assert_eq!(grant.granted, 2);
        assert_eq!(
            taken(&grant),
            vec![slot(1, "a"), slot(5, "c"), slot(5, "d")]
        );
        let text = refusal(&grant);
        assert!(text.contains("already made 3 changes"), "{text}");
        assert!(text.contains("MAX_ACTIONS_PER_WINDOW=3"), "{text}");
        // The cluster's (4) binds first: two more fit, counted with the other function's.
        let grant = take(&spent, "latency-restart", &limits(10, 4), &batch).expect("read");
        assert_eq!(grant.granted, 2);
        let text = refusal(&grant);
        assert!(
            text.contains("already made 4 changes in this cluster"),
            "{text}"
        );
        // Room for all.
        let grant = take(&spent, "latency-restart", &limits(0, 0), &batch).expect("read");
        assert_eq!((grant.granted, &grant.refused), (4, &None));
    }

    #[test]
    fn an_unreadable_budget_entry_is_an_error_naming_the_key() {
        let mut spent = BTreeMap::new();
        spent.insert("latency-restart".to_owned(), "not json".to_owned());
        let err = take(&spent, "error-rollback", &limits(5, 5), &[slot(4, "d")])
            .expect_err("an entry that is not a list of slots");
        let text = err.to_string();
        assert!(text.contains("\"latency-restart\""), "{text}");
        assert!(text.contains("is not a list of slots"), "{text}");
        assert!(text.contains("mesh-remediation-budget"), "{text}");
        assert!(!err.is_retryable(), "a person must repair it: {text}");
    }

    #[test]
    fn slots_are_given_back_exactly() {
        let spent = data(&[(
            "latency-restart",
            vec![slot(1, "a"), slot(2, "b"), slot(3, "c")],
        )]);
        let list = give_back(&spent, "latency-restart", &[slot(2, "b"), slot(3, "c")])
            .expect("given back");
        assert_eq!(
            serde_json::from_str::<Vec<Slot>>(&list).expect("list"),
            vec![slot(1, "a")]
        );
        assert_eq!(give_back(&spent, "latency-restart", &[slot(3, "z")]), None);
    }
}
