//! Enactment: read the object, apply the brakes, write the change with its record in one
//! guarded patch (409 loop, transient retries, dry run), confirm a lost answer, write the Event.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::Value;

use super::bookkeeping::Step;
use super::timebox::{CONFIRM_READ_TIME, Call, TimeBox};
use super::{Invocation, Pipeline, Request, Work};
use crate::budget;
use crate::error::Error;
use crate::pause;
use crate::record;
use crate::remediation::Remediation;
use crate::report::Outcome;
use crate::skip::SkipReason;

/// Writes refused with 409 before giving up (each one re-reads and decides again).
const MAX_WRITE_ATTEMPTS: u32 = 6;
/// Transient API failures (5xx, 429, timeouts) retried within one invocation.
const MAX_TRANSIENT_RETRIES: u32 = 2;

/// What one object's attempt spent of the budgets, given back unless a change may have landed.
#[derive(Default)]
struct Spending {
    /// Counted against `MAX_TARGETS_PER_INVOCATION`.
    counted: bool,
    /// The slot taken in the cluster's budgets.
    slot: Option<budget::Slot>,
    /// A change landed, or may have (its answer was lost): nothing is given back.
    landed: bool,
}

/// What a re-read says about a write whose answer was lost.
enum Landed {
    /// It landed: this is its outcome.
    Yes(Box<Outcome>),
    /// The object does not carry it: nothing was changed.
    No,
    /// The re-read failed too.
    Unknown,
}

impl<R: Remediation> Pipeline<R> {
    /// Works on one object; what it took of the budgets is given back if no change landed.
    pub(super) async fn act_on(
        &self,
        api: &Api<DynamicObject>,
        client: &kube::Client,
        work: &Work<R>,
        name: &str,
        invocation: &Invocation,
        changed: &AtomicUsize,
    ) -> Outcome {
        let mut spending = Spending::default();
        let outcome = self
            .attempt(api, client, work, name, invocation, changed, &mut spending)
            .await;
        if !spending.landed {
            if spending.counted {
                changed.fetch_sub(1, Ordering::SeqCst);
            }
            if let Some(slot) = &spending.slot {
                let limits = &self.config.policy.budget;
                let give_back = budget::release(client, limits, self.remediation.name(), slot);
                // Best effort within the time left; a slot not given back stays spent.
                let _ = self
                    .timebox(invocation)
                    .call(Call::Read, "give back a budget slot", async {
                        give_back.await;
                        Ok::<(), ()>(())
                    })
                    .await;
            }
        }
        outcome
    }

    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        api: &Api<DynamicObject>,
        client: &kube::Client,
        work: &Work<R>,
        name: &str,
        invocation: &Invocation,
        changed: &AtomicUsize,
        spending: &mut Spending,
    ) -> Outcome {
        let resource = &work.locator.resource;
        let target = self.describe_target(&work.locator, name);
        let timebox = self.timebox(invocation);
        let failed = |err: &Error| Outcome::failed(work.source.clone(), err).on(&target);
        let mut transient_retries = 0;
        // A write whose answer never came (reset, timeout, 5xx): it may have landed.
        let mut unanswered: Option<Unanswered> = None;
        // Out of time while a write may have landed: say so, and keep what it spent.
        let out_of_time = |err: Error, unanswered: &Option<Unanswered>, spending: &mut Spending| {
            if unanswered.is_none() {
                return failed(&err);
            }
            spending.landed = true;
            let why = format!(
                "{err}; an earlier write to {target} got no answer and may have landed: its annotation {} names trace {} if it did",
                record::record_annotation(self.remediation.name()),
                invocation.trace_id
            );
            failed(&Error::OutOfTime(why))
        };
        // The operator's brakes, read once the object is, for alerts only (a revert is a
        // person's own request).
        let mut brakes: Option<pause::Brakes> = None;
        for attempt in 0..MAX_WRITE_ATTEMPTS {
            let got = match timebox
                .call(Call::Read, &format!("get {target}"), api.get_opt(name))
                .await
            {
                Ok(got) => got,
                Err(err) => return out_of_time(err, &unanswered, spending),
            };
            let object = match got {
                Ok(Some(object)) => object,
                // A revert sent to every cluster finds the object in some only.
                Ok(None) if work.fanned_out => {
                    let why = SkipReason::Declined(format!("{target} not found in this cluster"));
                    return Outcome::skipped(work.source.clone(), &why).on(&target);
                }
                Ok(None) => return failed(&Error::Plan(format!("{target} not found"))),
                Err(err) => {
                    let err = Error::kube(format!("get {target}"), err);
                    if err.is_retryable() && transient_retries < MAX_TRANSIENT_RETRIES {
                        transient_retries += 1;
                        tokio::time::sleep(transient_backoff(&err, transient_retries)).await;
                        continue;
                    }
                    return failed(&err);
                }
            };
            if let Some((sent, outcome, event)) = unanswered.take()
                && record_landed(&object, self.remediation.name(), &sent)
            {
                // Our own write landed; only its answer was lost. Report it, do not redo it.
                spending.landed = true;
                if let Some((action, note)) = event {
                    self.record_event(client, resource, &object, action, &note, invocation)
                        .await;
                }
                return outcome.on(&target);
            }
            if brakes.is_none() && matches!(work.request, Request::Alert { .. }) {
                let read = timebox
                    .call(
                        Call::Read,
                        "read the pause switches",
                        pause::read(client, &work.locator.namespace),
                    )
                    .await;
                match read.and_then(|read| read) {
                    Ok(read) => brakes = Some(read),
                    Err(err) if err.is_retryable() && transient_retries < MAX_TRANSIENT_RETRIES => {
                        transient_retries += 1;
                        tokio::time::sleep(transient_backoff(&err, transient_retries)).await;
                        continue;
                    }
                    Err(err) => return failed(&err),
                }
            }
            if let Some(brakes) = &brakes
                && let Some(reason) = pause::refusal(
                    brakes,
                    self.remediation.name(),
                    &target,
                    &work.locator.namespace,
                    object.metadata.annotations.as_ref(),
                )
            {
                return Outcome::skipped(work.source.clone(), &reason).on(&target);
            }
            let step = match &work.request {
                Request::Alert {
                    input,
                    resolved: false,
                } => {
                    self.firing_step(work, input, client, &object, &target, invocation)
                        .await
                }
                Request::Alert {
                    input,
                    resolved: true,
                } => self.resolved_step(work, input, &object, &target, invocation),
                Request::Revert(request) => {
                    self.revert_step(work, request, &object, &target, invocation)
                }
            };
            let (body, dry_run, outcome, event, counts) = match step {
                Step::Done(outcome) => return outcome.on(&target),
                Step::Write {
                    body,
                    dry_run,
                    outcome,
                    event,
                    counts_against_budget,
                } => (body, dry_run, outcome, event, counts_against_budget),
            };
            if counts && !spending.counted {
                let max_targets = self.config.policy.max_targets;
                if changed.fetch_add(1, Ordering::SeqCst) >= max_targets {
                    changed.fetch_sub(1, Ordering::SeqCst);
                    let reason = SkipReason::BlastRadius { max_targets };
                    return Outcome::skipped(work.source.clone(), &reason).on(&target);
                }
                spending.counted = true;
            }
            if counts && !dry_run && spending.slot.is_none() && self.config.policy.budget.enabled()
            {
                let slot = budget::Slot {
                    at: invocation.now,
                    target: target.clone(),
                    trace_id: invocation.trace_id.clone(),
                };
                let limits = &self.config.policy.budget;
                let reserved = timebox
                    .call(
                        Call::Read,
                        "take a budget slot",
                        budget::reserve(client, limits, self.remediation.name(), &slot),
                    )
                    .await;
                match reserved.and_then(|r| r) {
                    Ok(Ok(())) => spending.slot = Some(slot),
                    Ok(Err(spent)) => {
                        return Outcome::skipped(work.source.clone(), &spent).on(&target);
                    }
                    Err(err) => return failed(&err),
                }
            }
            let mut params = PatchParams {
                field_manager: Some(record::FIELD_MANAGER.to_owned()),
                ..PatchParams::default()
            };
            params.dry_run = dry_run;
            let what = format!("patch {target}");
            let answer = timebox
                .call(
                    Call::Write,
                    &what,
                    api.patch(name, &params, &Patch::Merge(&body)),
                )
                .await;
            let answer = match answer {
                Ok(answer) => answer,
                Err(cut) => {
                    // Cut at the deadline with the write in flight: one read says whether
                    // it landed, in the time kept for that.
                    let sent = (!dry_run)
                        .then(|| sent_record(&body, self.remediation.name()))
                        .flatten()
                        .map(|sent| (sent, outcome, event));
                    let Some(sent) = sent else {
                        return failed(&cut);
                    };
                    return match self
                        .confirm_landed(api, client, resource, name, sent, invocation)
                        .await
                    {
                        Landed::Yes(outcome) => {
                            spending.landed = true;
                            (*outcome).on(&target)
                        }
                        Landed::No => {
                            // A request cut on our side can still be in flight at the
                            // server: keep its slot; the Lambda retry (same request id)
                            // recognises the change if it lands.
                            spending.landed = true;
                            failed(&Error::OutOfTime(format!(
                                "{cut}; a re-read shows it had not landed (a request still in flight can land later: the Lambda retry re-reads and recognises it by its request id)"
                            )))
                        }
                        Landed::Unknown => {
                            spending.landed = true;
                            failed(&Error::OutOfTime(format!(
                                "{cut}; it may have landed: the annotation {} of {target} names trace {} if it did",
                                record::record_annotation(self.remediation.name()),
                                invocation.trace_id
                            )))
                        }
                    };
                }
            };
            match answer {
                Ok(updated) => {
                    spending.landed = !dry_run;
                    if !dry_run && let Some((action, note)) = event {
                        self.record_event(client, resource, &updated, action, &note, invocation)
                            .await;
                    }
                    return outcome.on(&target);
                }
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    tracing::info!(
                        trace_id = %invocation.trace_id,
                        target = %target,
                        attempt,
                        "write conflict; re-reading and deciding again"
                    );
                    tokio::time::sleep(conflict_backoff(attempt)).await;
                }
                Err(err) => {
                    // Safe to retry: the write is guarded by resourceVersion, so if the
                    // failed attempt did land, the retry re-reads, finds this very record
                    // and reports the write instead of making it again.
                    let sent = (!dry_run)
                        .then(|| sent_record(&body, self.remediation.name()))
                        .flatten()
                        .map(|sent| (sent, outcome, event));
                    let err = Error::kube(format!("patch {target}"), err);
                    if err.is_retryable() && transient_retries < MAX_TRANSIENT_RETRIES {
                        unanswered = sent;
                        transient_retries += 1;
                        tokio::time::sleep(transient_backoff(&err, transient_retries)).await;
                        continue;
                    }
                    // No retry left, but the write may have landed: read once more before
                    // calling it failed, or the Lambda retry would find the change, call
                    // it a cooldown and it would never be reported.
                    let Some(sent) = sent else {
                        return failed(&err);
                    };
                    return match self
                        .confirm_landed(api, client, resource, name, sent, invocation)
                        .await
                    {
                        Landed::Yes(outcome) => {
                            spending.landed = true;
                            (*outcome).on(&target)
                        }
                        Landed::No => failed(&err),
                        Landed::Unknown => {
                            spending.landed = true;
                            failed(&err)
                        }
                    };
                }
            }
        }
        failed(&Error::ConflictStorm {
            target: target.clone(),
            attempts: MAX_WRITE_ATTEMPTS,
        })
    }

    /// Whether a write whose answer was lost landed, by one fresh read.
    async fn confirm_landed(
        &self,
        api: &Api<DynamicObject>,
        client: &kube::Client,
        resource: &ApiResource,
        name: &str,
        (sent, outcome, event): Unanswered,
        invocation: &Invocation,
    ) -> Landed {
        // The time kept back for exactly this read (see `TimeBox`).
        let read = tokio::time::timeout(CONFIRM_READ_TIME, api.get_opt(name)).await;
        let Ok(Ok(Some(object))) = read else {
            return Landed::Unknown;
        };
        if !record_landed(&object, self.remediation.name(), &sent) {
            return Landed::No;
        }
        if let Some((action, note)) = event {
            self.record_event(client, resource, &object, action, &note, invocation)
                .await;
        }
        Landed::Yes(Box::new(outcome))
    }

    /// The time budget of `invocation`.
    pub(super) fn timebox(&self, invocation: &Invocation) -> TimeBox {
        TimeBox::new(invocation.deadline, self.config.sinks.timeout)
    }
}

/// A write that got no answer: the record it carried, and the outcome and Event it would
/// have had, kept in case it landed.
type Unanswered = (String, Outcome, Option<(&'static str, String)>);

/// The action record a write carries (the annotation value, unique to this invocation).
fn sent_record(body: &Value, remediation: &str) -> Option<String> {
    body.pointer("/metadata/annotations")?
        .get(record::record_annotation(remediation))?
        .as_str()
        .map(str::to_owned)
}

/// Whether the object carries exactly the record a write of ours sent.
fn record_landed(object: &DynamicObject, remediation: &str, sent: &str) -> bool {
    object
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(&record::record_annotation(remediation)))
        .is_some_and(|stored| stored == sent)
}

/// Exponential backoff with jitter between conflicting writes: 10, 20, 40 ms ... plus up
/// to the same again, so racing invocations spread out instead of colliding again.
fn conflict_backoff(attempt: u32) -> Duration {
    let base = 10u64 << attempt.min(6);
    crate::backoff::jittered(base, base)
}

/// Backoff before retrying a transient failure: 100 ms, 200 ms (plus jitter), or the
/// server's `Retry-After` when it says so, capped at two seconds.
fn transient_backoff(error: &Error, retry: u32) -> Duration {
    let server_hint = match error {
        Error::Kube { source, .. } => match source.as_ref() {
            kube::Error::Api(status) => status
                .details
                .as_ref()
                .map(|d| u64::from(d.retry_after_seconds))
                .filter(|s| *s > 0),
            _ => None,
        },
        _ => None,
    };
    match server_hint {
        Some(seconds) => Duration::from_secs(seconds).min(Duration::from_secs(2)),
        None => conflict_backoff(retry + 3),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn backoff_grows_and_is_bounded() {
        assert!(conflict_backoff(0) <= Duration::from_millis(20));
        assert!(conflict_backoff(3) >= Duration::from_millis(80));
        assert!(conflict_backoff(50) <= Duration::from_millis(1280));
    }
}
