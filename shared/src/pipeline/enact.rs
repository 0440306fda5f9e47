//! Enactment: read the object, apply the brakes, write the change with its record in one
//! guarded patch (409 loop, transient retries, dry run), confirm a lost answer, write the Event.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::bookkeeping::Step;
use super::{Invocation, Pipeline, Request, Work};
use crate::decide::SkipReason;
use crate::error::Error;
use crate::pause;
use crate::record;
use crate::remediation::{Remediation, describe};
use crate::report::{Outcome, OutcomeKind};

/// Writes refused with 409 before giving up (each one re-reads and decides again).
const MAX_WRITE_ATTEMPTS: u32 = 6;
/// Transient API failures (5xx, 429, timeouts) retried within one invocation.
const MAX_TRANSIENT_RETRIES: u32 = 2;
/// No new target is started with less time than this before the Lambda deadline.
const DEADLINE_MARGIN: Duration = Duration::from_secs(2);

impl<R: Remediation> Pipeline<R> {
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn act_on(
        &self,
        api: &Api<DynamicObject>,
        client: &kube::Client,
        work: &Work<R::Facts>,
        name: &str,
        invocation: &Invocation,
        budget: &AtomicUsize,
        budget_taken: &mut bool,
    ) -> Outcome {
        let resource = &work.locator.resource;
        let target = describe(resource, &work.locator.namespace, name);
        let mut transient_retries = 0;
        // A write whose answer never came (reset, timeout, 5xx): it may have landed.
        let mut unanswered: Option<Unanswered> = None;
        // The operator's brakes, read once the object is, for alerts only (a revert is a
        // person's own request).
        let mut brakes: Option<pause::Brakes> = None;
        for attempt in 0..MAX_WRITE_ATTEMPTS {
            if let Some(deadline) = invocation.deadline
                && deadline.saturating_duration_since(Instant::now()) < DEADLINE_MARGIN
            {
                return Outcome::failed(work.source.clone(), &Error::Deadline(DEADLINE_MARGIN))
                    .on(&target);
            }
            let object = match api.get_opt(name).await {
                Ok(Some(object)) => object,
                Ok(None) => {
                    let err = Error::Plan(format!("{target} not found"));
                    return Outcome::failed(work.source.clone(), &err).on(&target);
                }
                Err(err) => {
                    let err = Error::kube(format!("get {target}"), err);
                    if err.is_retryable() && transient_retries < MAX_TRANSIENT_RETRIES {
                        transient_retries += 1;
                        tokio::time::sleep(transient_backoff(&err, transient_retries)).await;
                        continue;
                    }
                    return Outcome::failed(work.source.clone(), &err).on(&target);
                }
            };
            if brakes.is_none() && matches!(work.request, Request::Alert { .. }) {
                match pause::read(client, &work.locator.namespace).await {
                    Ok(read) => brakes = Some(read),
                    Err(err) if err.is_retryable() && transient_retries < MAX_TRANSIENT_RETRIES => {
                        transient_retries += 1;
                        tokio::time::sleep(transient_backoff(&err, transient_retries)).await;
                        continue;
                    }
                    Err(err) => return Outcome::failed(work.source.clone(), &err).on(&target),
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
                return Outcome::new(OutcomeKind::Skipped, work.source.clone())
                    .because(reason)
                    .on(&target);
            }
            if let Some((sent, outcome, event)) = unanswered.take()
                && record_landed(&object, self.remediation.name(), &sent)
            {
                // Our own write landed; only its answer was lost. Report it, do not redo it.
                if let Some((action, note)) = event {
                    self.record_event(client, resource, &object, action, &note, invocation)
                        .await;
                }
                return outcome.on(&target);
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
            if counts && !*budget_taken {
                if budget.fetch_add(1, Ordering::SeqCst) >= self.config.policy.max_targets {
                    let reason = SkipReason::BlastRadius {
                        max_targets: self.config.policy.max_targets,
                    };
                    return Outcome::new(OutcomeKind::Skipped, work.source.clone())
                        .because(reason)
                        .on(&target);
                }
                *budget_taken = true;
            }
            let mut params = PatchParams {
                field_manager: Some(record::FIELD_MANAGER.to_owned()),
                ..PatchParams::default()
            };
            params.dry_run = dry_run;
            match api.patch(name, &params, &Patch::Merge(&body)).await {
                Ok(updated) => {
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
                    if !dry_run {
                        unanswered = sent_record(&body, self.remediation.name())
                            .map(|sent| (sent, outcome, event));
                    }
                    let err = Error::kube(format!("patch {target}"), err);
                    if err.is_retryable() && transient_retries < MAX_TRANSIENT_RETRIES {
                        transient_retries += 1;
                        tokio::time::sleep(transient_backoff(&err, transient_retries)).await;
                        continue;
                    }
                    // No retry left, but the write may have landed: read once more before
                    // calling it failed, or the Lambda retry would find the change, call
                    // it a cooldown and it would never be reported.
                    if let Some(landed) = self
                        .confirm_landed(api, client, resource, name, unanswered.take(), invocation)
                        .await
                    {
                        return landed.on(&target);
                    }
                    return Outcome::failed(work.source.clone(), &err).on(&target);
                }
            }
        }
        let err = Error::ConflictStorm {
            target: target.clone(),
            attempts: MAX_WRITE_ATTEMPTS,
        };
        Outcome::failed(work.source.clone(), &err).on(&target)
    }

    /// The outcome of a write whose answer was lost, when a fresh read shows it landed.
    pub(super) async fn confirm_landed(
        &self,
        api: &Api<DynamicObject>,
        client: &kube::Client,
        resource: &ApiResource,
        name: &str,
        unanswered: Option<Unanswered>,
        invocation: &Invocation,
    ) -> Option<Outcome> {
        let (sent, outcome, event) = unanswered?;
        let object = api.get_opt(name).await.ok().flatten()?;
        if !record_landed(&object, self.remediation.name(), &sent) {
            return None;
        }
        if let Some((action, note)) = event {
            self.record_event(client, resource, &object, action, &note, invocation)
                .await;
        }
        Some(outcome)
    }
    /// Records a Kubernetes Event on the changed object. Best effort: the change is made
    /// and recorded on the object already, so a failed Event is logged, not fatal.
    pub(super) async fn record_event(
        &self,
        client: &kube::Client,
        resource: &ApiResource,
        object: &DynamicObject,
        action: &str,
        note: &str,
        invocation: &Invocation,
    ) {
        let namespace = object.metadata.namespace.clone().unwrap_or_default();
        let name = object.metadata.name.clone().unwrap_or_default();
        let events: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &namespace, &event_resource());
        let stamp = invocation.now.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
        let unique = invocation.now.timestamp_nanos_opt().unwrap_or_default();
        let base: String = name.chars().take(200).collect();
        let mut note = note.to_owned();
        if note.len() > 1000 {
            let mut cut = 1000;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
        }
        let event: DynamicObject = match serde_json::from_value(json!({
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {
                "name": format!("{base}.{unique:x}"),
                "namespace": namespace,
                "annotations": { format!("{}trace-id", record::ANNOTATION_PREFIX): invocation.trace_id },
            },
            "eventTime": stamp,
            "reportingController": format!("{}{}", record::ANNOTATION_PREFIX, self.remediation.name()),
            "reportingInstance": self.remediation.name(),
            "action": action,
            "reason": "AutoRemediation",
            "type": "Normal",
            "note": note,
            "regarding": {
                "apiVersion": resource.api_version,
                "kind": resource.kind,
                "namespace": namespace,
                "name": name,
                "uid": object.metadata.uid,
                "resourceVersion": object.metadata.resource_version,
            },
        })) {
            Ok(event) => event,
            Err(err) => {
                tracing::warn!(trace_id = %invocation.trace_id, error = %err, "cannot build Event");
                return;
            }
        };
        if let Err(err) = events.create(&PostParams::default(), &event).await {
            tracing::warn!(
                trace_id = %invocation.trace_id,
                target = %describe(resource, &namespace, &name),
                error = %err,
                "change applied but recording the Kubernetes Event failed"
            );
        }
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

/// `events.k8s.io/v1` Event.
pub fn event_resource() -> ApiResource {
    ApiResource {
        group: "events.k8s.io".into(),
        version: "v1".into(),
        api_version: "events.k8s.io/v1".into(),
        kind: "Event".into(),
        plural: "events".into(),
    }
}

/// Exponential backoff with jitter between conflicting writes: 10, 20, 40 ms ... plus up
/// to the same again, so racing invocations spread out instead of colliding again.
fn conflict_backoff(attempt: u32) -> Duration {
    let base = 10u64 << attempt.min(6);
    let jitter = u64::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos(),
    ) % (base + 1);
    Duration::from_millis(base + jitter)
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
