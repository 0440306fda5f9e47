//! Merge: one outcome per alert, however many objects, resource types and clusters it
//! reached, ranked by [`OutcomeKind::importance`].

use serde_json::Value;

use crate::report::{Outcome, OutcomeKind};

/// Outcomes in alert order, one per alert: an alert whose targets span several resource
/// types produced one outcome per type, merged here.
pub(super) fn merge_by_alert(mut outcomes: Vec<(usize, Outcome)>) -> Vec<Outcome> {
    outcomes.sort_by_key(|(order, _)| *order);
    let mut merged: Vec<Outcome> = Vec::with_capacity(outcomes.len());
    let mut outcomes = outcomes.into_iter().peekable();
    while let Some((order, first)) = outcomes.next() {
        let mut same = vec![first];
        while let Some((_, next)) = outcomes.next_if(|(o, _)| *o == order) {
            same.push(next);
        }
        merged.push(merge_outcomes(same));
    }
    merged
}

/// One alert aimed at several objects still gets one outcome, the most important by
/// [`OutcomeKind::importance`] (failed, escalated, applied, dry-run, skipped); targets,
/// reasons and patches are listed together.
pub(super) fn merge_outcomes(mut outcomes: Vec<Outcome>) -> Outcome {
    let same_as_first = |o: &Outcome| {
        o.target.is_none()
            && o.outcome == outcomes[0].outcome
            && o.reason == outcomes[0].reason
            && o.patch.is_none()
    };
    if outcomes.len() == 1 || outcomes.iter().all(same_as_first) {
        return outcomes.remove(0);
    }
    // The one ranking reports use too: an alert with one applied and one escalated
    // target is escalated, so it pages.
    let kind = outcomes
        .iter()
        .map(|o| o.outcome)
        .max_by_key(|k| k.importance())
        .unwrap_or(OutcomeKind::Skipped);
    let mut merged = Outcome::new(kind, outcomes[0].source.clone());
    let label = |o: &Outcome| o.target.clone().unwrap_or_default();
    let targets: Vec<String> = outcomes.iter().filter_map(|o| o.target.clone()).collect();
    merged.target = (!targets.is_empty()).then(|| targets.join(", "));
    let mut reasons: Vec<String> = Vec::new();
    for o in &outcomes {
        let Some(r) = &o.reason else { continue };
        let line = match &o.target {
            Some(target) => format!("{target}: {} {r}", o.outcome.as_str()),
            None => format!("{} {r}", o.outcome.as_str()),
        };
        if !reasons.contains(&line) {
            reasons.push(line);
        }
    }
    merged.reason = (!reasons.is_empty()).then(|| reasons.join("; "));
    let changes: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.change.as_ref().map(|c| format!("{}: {c}", label(o))))
        .collect();
    merged.change = (!changes.is_empty()).then(|| changes.join("; "));
    let patches: serde_json::Map<String, Value> = outcomes
        .iter()
        .filter_map(|o| o.patch.clone().map(|p| (label(o), p)))
        .collect();
    merged.patch = (!patches.is_empty()).then_some(Value::Object(patches));
    merged.retryable = outcomes.iter().any(|o| o.retryable);
    merged.needs_a_person = outcomes.iter().any(|o| o.needs_a_person);
    for o in &outcomes {
        for (cluster, kind) in &o.clusters {
            merged.add_cluster(cluster, *kind);
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Source;

    #[test]
    fn an_alert_spanning_several_resource_types_gets_one_outcome() {
        let vs = Outcome::new(OutcomeKind::Applied, Source::default()).on("VirtualService shop/f");
        let dr = Outcome::new(OutcomeKind::Skipped, Source::default())
            .because("weights do it")
            .on("DestinationRule shop/f");
        let other = Outcome::new(OutcomeKind::Failed, Source::default()).because("bad");
        let dup = |o: usize| {
            let outcome =
                Outcome::new(OutcomeKind::Skipped, Source::default()).because("duplicate");
            (o, outcome)
        };
        let merged = merge_by_alert(vec![(1, other), (0, dr), dup(2), (0, vs), dup(2)]);
        let kinds: Vec<OutcomeKind> = merged.iter().map(|o| o.outcome).collect();
        assert_eq!(
            kinds,
            [
                OutcomeKind::Applied,
                OutcomeKind::Failed,
                OutcomeKind::Skipped
            ]
        );
        assert!(
            merged[0]
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("DestinationRule shop/f: skipped weights do it"))
        );
        // The same skip for both types reads as one.
        assert_eq!(merged[2].reason.as_deref(), Some("duplicate"));
    }

    #[test]
    fn several_targets_make_one_outcome() {
        let a = Outcome::new(OutcomeKind::Applied, Source::default()).on("VirtualService shop/a");
        let b = Outcome::new(OutcomeKind::Skipped, Source::default())
            .because("cooldown")
            .on("VirtualService shop/b");
        let merged = merge_outcomes(vec![a, b]);
        assert_eq!(merged.outcome, OutcomeKind::Applied);
        assert_eq!(
            merged.target.as_deref(),
            Some("VirtualService shop/a, VirtualService shop/b")
        );
        assert!(
            merged
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("shop/b: skipped cooldown"))
        );
        // Applied on one target and escalated on the other: escalated, as reports rank it.
        let a = Outcome::new(OutcomeKind::Applied, Source::default()).on("VirtualService shop/a");
        let e = Outcome::new(OutcomeKind::Escalated, Source::default())
            .because("3 actions without recovery")
            .on("DestinationRule shop/a");
        assert_eq!(merge_outcomes(vec![a, e]).outcome, OutcomeKind::Escalated);
    }
}
