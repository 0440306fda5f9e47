//! Decision: pure functions from an alert and the target's state to act or skip.
//!
//! Nothing here does I/O, so every safety rule is unit-tested with plain values.

use chrono::{DateTime, Utc};

use crate::cluster::record::ActionRecord;
use crate::config::Policy;
use crate::guard::skip::SkipReason;
use crate::intake::AlertInput;
use crate::intake::alert::AlertStatus;

/// The first gate, before any API call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// A firing alert that may act.
    Firing,
    /// A resolved alert: never a fresh action; may record recovery or restore.
    Resolved,
    /// No action, for this reason.
    Skip(SkipReason),
}

/// Checks an alert against the rules that need no object: staleness and namespaces.
pub fn screen(
    input: &AlertInput,
    published_at: Option<DateTime<Utc>>,
    policy: &Policy,
    now: DateTime<Utc>,
) -> Gate {
    let request = Request {
        namespace: &input.namespace,
        published_at,
    };
    if let Some(reason) = screen_request(&request, policy, now) {
        return Gate::Skip(reason);
    }
    match input.alert.status {
        AlertStatus::Resolved => Gate::Resolved,
        AlertStatus::Firing => match input.alert.real_end() {
            Some(ended_at) if ended_at <= now => Gate::Skip(SkipReason::AlertEnded { ended_at }),
            _ => Gate::Firing,
        },
    }
}

/// What every request (an alert or a revert request) is screened on before any API call.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Namespace of the target.
    pub namespace: &'a str,
    /// When SNS accepted the publish, for requests that came through SNS.
    pub published_at: Option<DateTime<Utc>>,
}

/// The rules that need no object: protected and allowed namespaces, staleness. (Which
/// cluster a request is for is settled before, by [`crate::guard::clusters::Clusters::route`].)
pub fn screen_request(
    request: &Request<'_>,
    policy: &Policy,
    now: DateTime<Utc>,
) -> Option<SkipReason> {
    let namespace = request.namespace;
    if policy.protected_namespaces.contains(namespace) {
        return Some(SkipReason::ProtectedNamespace(namespace.to_owned()));
    }
    if !policy.allowed_namespaces.is_empty() && !policy.allowed_namespaces.contains(namespace) {
        return Some(SkipReason::NamespaceNotAllowed(namespace.to_owned()));
    }
    if !policy.max_delivery_age.is_zero()
        && let Some(published) = request.published_at
    {
        let age = (now - published).to_std().unwrap_or_default();
        if age > policy.max_delivery_age {
            return Some(SkipReason::StaleDelivery {
                age,
                limit: policy.max_delivery_age,
            });
        }
    }
    None
}

/// What to do about one target for one firing alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Act; the new record will carry this streak.
    Act {
        /// Actions without recovery, this one included.
        streak: u32,
    },
    /// Hand over to humans: too many actions without recovery.
    Escalate {
        /// Actions already taken without recovery.
        streak: u32,
    },
    /// No action.
    Skip(SkipReason),
}

/// Decides on a target given its opt-in label and the previous action record.
pub fn decide(
    target: &str,
    opted_in: bool,
    record: Option<&ActionRecord>,
    policy: &Policy,
    now: DateTime<Utc>,
) -> Verdict {
    if !opted_in {
        return Verdict::Skip(SkipReason::NotOptedIn(target.to_owned()));
    }
    let Some(record) = record else {
        return Verdict::Act { streak: 1 };
    };
    let cooldown = chrono::Duration::from_std(policy.cooldown).unwrap_or(chrono::Duration::MAX);
    let next_allowed = record
        .at
        .checked_add_signed(cooldown)
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    if now < next_allowed {
        return Verdict::Skip(SkipReason::Cooldown {
            last_action: record.at,
            next_allowed,
        });
    }
    let window =
        chrono::Duration::from_std(policy.escalation_window).unwrap_or(chrono::Duration::MAX);
    let within_window = now - record.at <= window;
    let streak = if record.recovered() || !within_window {
        1
    } else {
        record.streak.saturating_add(1)
    };
    if policy.escalate_after > 0 && streak > policy.escalate_after {
        Verdict::Escalate {
            streak: record.streak,
        }
    } else {
        Verdict::Act { streak }
    }
}

/// Whether the next action should be taken as a dry run.
pub fn is_dry_run(config_dry_run: bool, input: &AlertInput) -> bool {
    config_dry_run || input.dry_run_requested || input.drill
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intake::alert::Alert;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0)
            .single()
            .expect("valid time")
    }

    fn input(status: AlertStatus, namespace: &str) -> AlertInput {
        let alert: Alert = serde_json::from_value(serde_json::json!({
            "status": status,
            "labels": {"alertname": "IstioHighLatencyP95", "remediation": "latency-restart",
                       "namespace": namespace, "deployment": "checkout-v2"},
            "annotations": {},
            "startsAt": "2026-11-25T11:50:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "fingerprint": "abc"
        }))
        .expect("valid alert");
        AlertInput {
            alert,
            namespace: namespace.into(),
            dry_run_requested: false,
            drill: false,
        }
    }

    fn record(minutes_ago: i64, streak: u32) -> ActionRecord {
        ActionRecord {
            fingerprint: "abc".into(),
            trace_id: "t".into(),
            request_id: None,
            at: now() - chrono::Duration::minutes(minutes_ago),
            streak,
            change: "restart".into(),
            previous: None,
            applied: None,
            recovered_at: None,
            reverted: None,
            escalated_at: None,
            verification: None,
        }
    }

    #[test]
    fn only_firing_alerts_act() {
        let policy = Policy::default();
        assert_eq!(
            screen(
                &input(AlertStatus::Firing, "shop"),
                Some(now()),
                &policy,
                now()
            ),
            Gate::Firing
        );
        assert_eq!(
            screen(
                &input(AlertStatus::Resolved, "shop"),
                Some(now()),
                &policy,
                now()
            ),
            Gate::Resolved
        );
    }

    #[test]
    fn stale_deliveries_skip_but_long_firing_alerts_do_not() {
        let policy = Policy::default();
        let old = now() - chrono::Duration::minutes(20);
        let gate = screen(
            &input(AlertStatus::Firing, "shop"),
            Some(old),
            &policy,
            now(),
        );
        assert!(
            matches!(gate, Gate::Skip(SkipReason::StaleDelivery { .. })),
            "{gate:?}"
        );
        // startsAt is long ago, but the message is fresh: Alertmanager re-sent it.
        let mut long_firing = input(AlertStatus::Firing, "shop");
        long_firing.alert.starts_at = now() - chrono::Duration::days(2);
        assert_eq!(
            screen(&long_firing, Some(now()), &policy, now()),
            Gate::Firing
        );
    }

    #[test]
    fn ended_alerts_are_stale() {
        let mut alert = input(AlertStatus::Firing, "shop");
        alert.alert.ends_at = Some(now() - chrono::Duration::minutes(1));
        let gate = screen(&alert, Some(now()), &Policy::default(), now());
        assert!(
            matches!(gate, Gate::Skip(SkipReason::AlertEnded { .. })),
            "{gate:?}"
        );
        alert.alert.ends_at = Some(now() + chrono::Duration::minutes(4));
        assert_eq!(
            screen(&alert, Some(now()), &Policy::default(), now()),
            Gate::Firing
        );
    }

    #[test]
    fn protected_and_unlisted_namespaces_never_act() {
        let mut policy = Policy::default();
        let gate = screen(
            &input(AlertStatus::Firing, "kube-system"),
            Some(now()),
            &policy,
            now(),
        );
        assert_eq!(
            gate,
            Gate::Skip(SkipReason::ProtectedNamespace("kube-system".into()))
        );
        policy.allowed_namespaces.insert("payments".into());
        let gate = screen(
            &input(AlertStatus::Firing, "shop"),
            Some(now()),
            &policy,
            now(),
        );
        assert_eq!(
            gate,
            Gate::Skip(SkipReason::NamespaceNotAllowed("shop".into()))
        );
    }

    #[test]
    fn opt_in_is_required() {
        let verdict = decide("Deployment shop/x", false, None, &Policy::default(), now());
        assert!(matches!(verdict, Verdict::Skip(SkipReason::NotOptedIn(_))));
        assert_eq!(
            decide("t", true, None, &Policy::default(), now()),
            Verdict::Act { streak: 1 }
        );
    }

    #[test]
    fn cooldown_blocks_repeat_actions() {
        let policy = Policy::default(); // 15 minutes
        let verdict = decide("t", true, Some(&record(5, 1)), &policy, now());
        assert!(
            matches!(verdict, Verdict::Skip(SkipReason::Cooldown { .. })),
            "{verdict:?}"
        );
        assert_eq!(
            decide("t", true, Some(&record(16, 1)), &policy, now()),
            Verdict::Act { streak: 2 }
        );
    }

    #[test]
    fn repeated_actions_without_recovery_escalate() {
        let policy = Policy::default(); // escalate after 3 within an hour
        assert_eq!(
            decide("t", true, Some(&record(20, 2)), &policy, now()),
            Verdict::Act { streak: 3 }
        );
        assert_eq!(
            decide("t", true, Some(&record(20, 3)), &policy, now()),
            Verdict::Escalate { streak: 3 }
        );
        // Outside the window the target counts as recovered.
        assert_eq!(
            decide("t", true, Some(&record(61, 3)), &policy, now()),
            Verdict::Act { streak: 1 }
        );
        // A resolved alert after the action resets the streak.
        let mut recovered = record(20, 3);
        recovered.recovered_at = Some(now() - chrono::Duration::minutes(10));
        assert_eq!(
            decide("t", true, Some(&recovered), &policy, now()),
            Verdict::Act { streak: 1 }
        );
    }

    #[test]
    fn drills_and_dry_run_labels_force_dry_run() {
        let mut alert = input(AlertStatus::Firing, "shop");
        assert!(!is_dry_run(false, &alert));
        assert!(is_dry_run(true, &alert));
        alert.drill = true;
        assert!(is_dry_run(false, &alert));
        alert.drill = false;
        alert.dry_run_requested = true;
        assert!(is_dry_run(false, &alert));
    }
}
