//! What the suites judge a run by, whatever the function: Istio still accepting the stored
//! objects, a refusal that changed nothing, reverts that give back what was there; and the
//! [`Findings`] that collect each mesh's violations by class.

use std::collections::{BTreeMap, BTreeSet};

use mesh_remediation::report::{Outcome, OutcomeKind};
use serde_json::Value;

use super::key;
use crate::istio_oracle::Compiled;
use crate::mesh_gen::Violation;

/// Collects violations, one per class (details joined, the first few kept).
#[derive(Default)]
pub struct Findings(BTreeMap<&'static str, Vec<String>>);

impl Findings {
    /// Adds one violation of `class`.
    pub fn add(&mut self, class: &'static str, detail: String) {
        self.0.entry(class).or_default().push(detail);
    }

    /// One violation per class, its details after `context`.
    pub fn into_violations(self, context: &str) -> Vec<Violation> {
        self.0
            .into_iter()
            .map(|(class, details)| {
                let shown: Vec<&str> = details.iter().take(4).map(String::as_str).collect();
                let more = details.len().saturating_sub(shown.len());
                let more = if more > 0 {
                    format!(" (+{more} more)")
                } else {
                    String::new()
                };
                Violation::new(class, format!("{context}: {}{more}", shown.join("; ")))
            })
            .collect()
    }
}

/// The objects (as they were before) whose spec, labels or annotations differ after.
pub fn changed_objects(before: &[Value], after: &[Value]) -> Vec<Value> {
    before
        .iter()
        .filter(|b| {
            let now = after
                .iter()
                .find(|a| key(a) == key(b) && a["kind"] == b["kind"]);
            now.is_none_or(|a| {
                a["spec"] != b["spec"]
                    || a["metadata"]["labels"] != b["metadata"]["labels"]
                    || a["metadata"]["annotations"] != b["metadata"]["annotations"]
            })
        })
        .cloned()
        .collect()
}

/// The context of a mesh's findings: its outcome and what it said.
pub fn outcome_context(outcome: &Outcome) -> String {
    format!(
        "outcome {} ({})",
        outcome.outcome.as_str(),
        outcome
            .reason
            .as_deref()
            .or(outcome.change.as_deref())
            .unwrap_or_default()
    )
}

/// The compiled configuration after the function acted, or the finding that Istio rejects
/// the stored objects.
pub fn compiled_after<'a>(
    after: Result<&'a Compiled, &String>,
    f: &mut Findings,
) -> Option<&'a Compiled> {
    match after {
        Ok(after) => Some(after),
        Err(why) => {
            f.add(
                "invalid-after",
                format!("Istio rejects the stored objects: {why}"),
            );
            None
        }
    }
}

/// What every remediation promises about its outcome: a refusal (skipped or failed) changed
/// no stored object (`changed`) and no compiled configuration; no other outcome than
/// applied or a refusal. Whether it applied (what applying must do is the suite's).
pub fn applied_or_refused_cleanly(
    outcome: &Outcome,
    before: &Compiled,
    after: &Compiled,
    changed: &[Value],
    f: &mut Findings,
) -> bool {
    match outcome.outcome {
        OutcomeKind::Applied => return true,
        OutcomeKind::Skipped | OutcomeKind::Failed => {
            if !changed.is_empty() {
                let names: Vec<String> = changed.iter().map(key).collect();
                f.add(
                    "refused-but-changed",
                    format!("changed {}", names.join(", ")),
                );
            }
            if let Some(diff) =
                first_difference(&before.raw["proxies"], &after.raw["proxies"], "proxies")
            {
                f.add("refused-but-compiled-differs", diff);
            }
        }
        other => f.add("unexpected-outcome", other.as_str().to_owned()),
    }
    false
}

/// What a suite knows after reverting one mesh's changes.
pub struct Reverted<'a> {
    /// The compiled configuration before the function acted.
    pub before: &'a Compiled,
    /// The same after every revert, or why Istio rejects the objects.
    pub reverted: Result<&'a Compiled, &'a String>,
    /// The objects before the function acted.
    pub before_objects: &'a [Value],
    /// The same after every revert.
    pub reverted_objects: &'a [Value],
    /// Each revert request's object and outcome.
    pub reverts: &'a [(String, Outcome)],
}

/// Every revert is applied and gives back the exact compiled configuration and specs.
pub fn check_reverts(t: &Reverted<'_>, f: &mut Findings) {
    for (object, outcome) in t.reverts {
        if outcome.outcome != OutcomeKind::Applied {
            f.add(
                "revert-refused",
                format!(
                    "{object}: {} {}",
                    outcome.outcome.as_str(),
                    outcome.reason.as_deref().unwrap_or_default()
                ),
            );
        }
    }
    match t.reverted {
        Err(why) => f.add(
            "revert-differs",
            format!("Istio rejects the reverted objects: {why}"),
        ),
        Ok(reverted) => {
            let was = serde_json::to_string(&t.before.raw["proxies"]).expect("json");
            let now = serde_json::to_string(&reverted.raw["proxies"]).expect("json");
            if was != now {
                let diff = first_difference(
                    &t.before.raw["proxies"],
                    &reverted.raw["proxies"],
                    "proxies",
                );
                f.add(
                    "revert-differs",
                    diff.unwrap_or_else(|| "the JSON text differs".into()),
                );
            }
        }
    }
    for before in t.before_objects {
        let now = t
            .reverted_objects
            .iter()
            .find(|o| key(o) == key(before) && o["kind"] == before["kind"]);
        if now.is_none_or(|o| o["spec"] != before["spec"]) {
            f.add(
                "revert-spec-differs",
                format!("{} {}", before["kind"], key(before)),
            );
        }
    }
}

/// Where two JSON documents first differ, and how: `at /path: before -> after`.
pub fn first_difference(a: &Value, b: &Value, at: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                let (p, q) = (
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                );
                first_difference(p, q, &format!("{at}/{k}"))
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (p, q))| first_difference(p, q, &format!("{at}/{i}"))),
        _ if a == b => None,
        _ => Some(format!("at {at}: {} -> {}", cut(a), cut(b))),
    }
}

fn cut(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(300) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text,
    }
}
