//! Verification in the pipeline: scheduling a landed change's check, and judging a verify
//! request on a fresh read of its object as a [`Step`]: record the verdict, hand off what
//! did not help, undo what made things worse (the revert request's own plan and guards).

use std::sync::Arc;

use kube::api::DynamicObject;
use serde_json::json;
use tokio::sync::OnceCell;
use tracing::instrument;

use super::bookkeeping::Step;
use super::requests::Intake;
use super::timebox::Call;
use super::{Invocation, Pipeline, Request, Subject, Work};
use crate::cluster::record::{self, ActionRecord, Reversal, Verification};
use crate::error::Error;
use crate::guard::escalation::{ESCALATED_ANNOTATION, Escalation};
use crate::guard::skip::SkipReason;
use crate::intake::AlertInput;
use crate::intake::verify::{VerifyDelivery, validate_verify};
use crate::remediation::{Locator, Plan, Remediation};
use crate::report::{Outcome, OutcomeKind, Source};
use crate::verify::verdict::{self, Judgement, Measurement, Verdict};
use crate::verify::{VerifyRequest, rollout};

/// A verify request as work: the request, and its measurements once taken (a conflict's
/// re-read decides again on the same evidence instead of querying again).
pub(super) struct Verify {
    pub(super) request: VerifyRequest,
    measured: OnceCell<crate::Result<Vec<Measurement>>>,
}

impl<R: Remediation> Pipeline<R> {
    /// The record's verification state for a change about to be written: pending, when it
    /// will be verified (not in a dry run, not a drill).
    pub(super) fn pending_verification(&self, at: &Subject<'_, R>) -> Option<Verification> {
        let verifier = self.verifier.as_ref().filter(|v| v.schedules())?;
        if at.work.dry_run(self.config.dry_run).is_some() {
            return None;
        }
        let after = chrono::Duration::from_std(verifier.settings.after).ok()?;
        Some(Verification::pending(at.invocation.now + after))
    }

    /// The verify request for a change carrying `new_record`, when it is to be verified.
    pub(super) fn verify_request(
        &self,
        at: &Subject<'_, R>,
        input: &AlertInput,
        new_record: &ActionRecord,
    ) -> Option<VerifyRequest> {
        new_record.verification.as_ref()?;
        Some(VerifyRequest {
            remediation: self.remediation.name().to_owned(),
            namespace: at.namespace.to_owned(),
            kind: at.work.locator.resource.kind.clone(),
            name: at.name.to_owned(),
            trace_id: new_record.trace_id.clone(),
            at: new_record.at,
            cluster: at.work.locator.cluster.clone(),
            labels: input.alert.labels.clone(),
        })
    }

    /// Sends each landed change's verify request to wait on the queue; a change whose
    /// request could not be sent says so in its outcome (the change itself stands).
    pub(super) async fn schedule_verifications(
        &self,
        landed: Vec<(usize, VerifyRequest)>,
        outcomes: &mut [(usize, Outcome)],
        invocation: &Invocation,
    ) {
        let Some(verifier) = &self.verifier else {
            return;
        };
        for (order, request) in landed {
            let target = format!("{} {}/{}", request.kind, request.namespace, request.name);
            let sent = self
                .timebox(invocation)
                .call(
                    Call::Read,
                    "schedule the verification",
                    verifier.schedule(&request),
                )
                .await
                .and_then(|sent| sent);
            let Err(err) = sent else {
                tracing::info!(%target, after_seconds = verifier.settings.after.as_secs(), "verification scheduled");
                continue;
            };
            tracing::warn!(%target, error = %err, "verification not scheduled; the change stands unverified");
            for (_, outcome) in outcomes.iter_mut().filter(|(o, _)| *o == order) {
                let note = format!("verification of {target} not scheduled: {err}");
                outcome.reason = Some(match outcome.reason.take() {
                    Some(reason) => format!("{reason}; {note}"),
                    None => note,
                });
            }
        }
    }

    /// Validates verify requests; each becomes one piece of work on its object.
    #[instrument(name = "intake", skip_all, fields(trace_id = %invocation.trace_id))]
    pub(super) fn intake_verify(
        &self,
        deliveries: Vec<VerifyDelivery>,
        invocation: &Invocation,
    ) -> Intake<R> {
        let mut intake = Intake {
            settled: Vec::new(),
            work: Vec::new(),
        };
        for (order, delivery) in deliveries.into_iter().enumerate() {
            let mut source = Source {
                message_id: delivery.message_id,
                alert: Some("VerifyRequest".into()),
                ..Source::default()
            };
            let name = self.remediation.name();
            let request = delivery.request.and_then(|request| {
                validate_verify(&request, name).map_err(Error::Input)?;
                Ok(request)
            });
            let request = match request {
                Ok(request) => request,
                Err(err) => {
                    intake.settled.push((order, Outcome::failed(source, &err)));
                    continue;
                }
            };
            source.namespace = Some(request.namespace.clone());
            let kinds = self.remediation.verifiable(&self.config);
            let Some(resource) = kinds.into_iter().find(|r| r.kind == request.kind) else {
                let why = format!("{name} changes no {} objects", request.kind);
                intake
                    .settled
                    .push((order, Outcome::failed(source, &Error::Input(why))));
                continue;
            };
            intake.work.push(Work {
                order,
                source,
                locator: Locator {
                    resource,
                    namespace: request.namespace.clone(),
                    name: Some(request.name.clone()),
                    everywhere: false,
                    subject: None,
                    cluster: request.cluster.clone(),
                },
                request: Request::Verify(Verify {
                    request,
                    measured: OnceCell::new(),
                }),
                observed: Arc::new(OnceCell::new()),
                facts: Arc::new(OnceCell::new()),
                fanned_out: false,
            });
        }
        intake
    }

    /// Verify request, on a fresh read: the verdict on the recorded action, written once.
    #[instrument(
        name = "decide",
        skip_all,
        fields(trace_id = %at.invocation.trace_id, alert = at.alert(), target = %at.target)
    )]
    pub(super) async fn verify_step(
        &self,
        at: &Subject<'_, R>,
        verify: &Verify,
        object: &DynamicObject,
    ) -> Step {
        let request = &verify.request;
        let source = at.work.source.clone();
        let target = &at.target;
        let declined =
            |why: String| Step::Done(Outcome::skipped(source.clone(), &SkipReason::Declined(why)));
        let record = match self.read_record(object) {
            Ok(Some(record)) => record,
            Ok(None) => {
                return declined(format!(
                    "no action is recorded on {target}; nothing to verify"
                ));
            }
            Err(err) => return Step::Done(Outcome::failed(source, &err)),
        };
        if record.trace_id != request.trace_id {
            return declined(format!(
                "the last action on {target} is trace {} at {}, not {}: a newer action superseded the one to verify",
                record.trace_id,
                record.at.to_rfc3339(),
                crate::intake::names::printable(&request.trace_id)
            ));
        }
        if let Some(done) = record.verification.as_ref().filter(|v| v.judged()) {
            return declined(format!(
                "already verified: {} at {} (trace {}); nothing more to do",
                state_name(done),
                done.at.map(|t| t.to_rfc3339()).unwrap_or_default(),
                done.trace_id.as_deref().unwrap_or_default()
            ));
        }
        if let Some(reverted) = &record.reverted {
            return declined(format!(
                "the action was reverted at {} before its verification (trace {}); nothing to verify",
                reverted.at.to_rfc3339(),
                reverted.trace_id
            ));
        }
        if !record::opted_in(object.metadata.labels.as_ref()) {
            return declined(format!(
                "{target} is no longer labelled auto_remediation=active; left as is"
            ));
        }
        let measurements = match self.measured(at, verify).await {
            Ok(measurements) => measurements.clone(),
            Err(err) => return Step::Done(Outcome::failed(source, err)),
        };
        let rollout = serde_json::to_value(object)
            .ok()
            .and_then(|json| rollout::of_deployment(&request.kind, &json));
        let margin = self
            .verifier
            .as_ref()
            .map_or(0.2, |v| v.settings.worse_margin);
        let judgement = verdict::judge(&measurements, rollout.as_ref(), margin);
        let alert = request.labels.get("alertname").map_or_else(
            || self.remediation.name().to_owned(),
            |name| crate::intake::names::printable(name),
        );
        self.verdict_step(at, object, record, &alert, judgement, measurements)
    }

    /// The measurements of `verify`, taken once within the time box.
    async fn measured<'v>(
        &self,
        at: &Subject<'_, R>,
        verify: &'v Verify,
    ) -> &'v crate::Result<Vec<Measurement>> {
        let timebox = self.timebox(at.invocation);
        verify
            .measured
            .get_or_init(|| async move {
                let Some(verifier) = &self.verifier else {
                    return Err(Error::Config {
                        var: "PROMETHEUS_URL",
                        message: "not set: a verify request cannot be judged without Prometheus"
                            .into(),
                    });
                };
                timebox
                    .call(
                        Call::Read,
                        "query Prometheus",
                        verifier.measure(&verify.request),
                    )
                    .await
                    .and_then(|measured| measured)
            })
            .await
    }

    /// The write a verdict makes: the record's verification, and for a change that did not
    /// help, the hand-off (and for a worse one, its undo where it can be undone).
    fn verdict_step(
        &self,
        at: &Subject<'_, R>,
        object: &DynamicObject,
        mut record: ActionRecord,
        alert: &str,
        judgement: Judgement,
        measurements: Vec<Measurement>,
    ) -> Step {
        let now = at.invocation.now;
        let trace_id = at.invocation.trace_id.clone();
        let mut verification = Verification {
            state: judgement.verdict.into(),
            due: record.verification.as_ref().and_then(|v| v.due),
            at: Some(now),
            trace_id: Some(trace_id.clone()),
            summary: Some(judgement.why.clone()),
            evidence: measurements,
            undone: false,
        };
        let (plan, reason) = self.verdict_plan(
            at,
            object,
            &mut record,
            &mut verification,
            alert,
            &judgement,
        );
        if judgement.verdict != Verdict::Verified {
            record.escalated_at = Some(now);
        }
        let evidence = serde_json::to_value(&verification).ok();
        // The hand-off pages under the acting alert's fingerprint, as its escalation would.
        let fingerprint = record.fingerprint.clone();
        record.verification = Some(verification);
        match self.write_step(at, object, &plan, &record, false) {
            Step::Write(mut write) => {
                let outcome = &mut write.outcome;
                let dry_run = outcome.reason.take();
                outcome.outcome = match (judgement.verdict, &dry_run) {
                    (_, Some(_)) => OutcomeKind::DryRun,
                    (Verdict::Verified, None) => OutcomeKind::Skipped,
                    (Verdict::NotRecovered | Verdict::Worse, None) => OutcomeKind::Escalated,
                };
                outcome.reason = Some(match dry_run {
                    Some(dry) => format!("{}: {reason} ({dry})", judgement.verdict.as_str()),
                    None => format!("{}: {reason}", judgement.verdict.as_str()),
                });
                outcome.verification = evidence;
                outcome.source.fingerprint = Some(fingerprint);
                Step::Write(write)
            }
            done => done,
        }
    }

    /// What a verdict writes and says: nothing but the record when verified; the hand-off
    /// marker when not recovered; the undo with the marker when worse (or only the marker
    /// when the change cannot be undone).
    fn verdict_plan(
        &self,
        at: &Subject<'_, R>,
        object: &DynamicObject,
        record: &mut ActionRecord,
        verification: &mut Verification,
        alert: &str,
        judgement: &Judgement,
    ) -> (Plan, String) {
        let now = at.invocation.now;
        let trace_id = at.invocation.trace_id.clone();
        let hand_off = Escalation {
            remediation: self.remediation.name().to_owned(),
            alert: alert.to_owned(),
            fingerprint: record.fingerprint.clone(),
            at: now,
            trace_id: trace_id.clone(),
            streak: record.streak,
            resolved_at: None,
        };
        let marker =
            json!({"metadata": {"annotations": {ESCALATED_ANNOTATION: hand_off.to_annotation()}}});
        let handed = format!(
            "handed to a person: no function acts on {} until the alert stays resolved for {}s or someone removes the annotation {ESCALATED_ANNOTATION}",
            at.target,
            self.config.policy.escalation_window.as_secs()
        );
        match judgement.verdict {
            Verdict::Verified => (
                Plan {
                    patch: json!({}),
                    summary: format!("verified: {}", judgement.why),
                    action: "Verified",
                    previous: None,
                    applied: None,
                },
                judgement.why.clone(),
            ),
            Verdict::NotRecovered => (
                Plan {
                    patch: marker,
                    summary: format!("not recovered; {handed}"),
                    action: "NotRecovered",
                    previous: None,
                    applied: None,
                },
                format!("{}; {handed}", judgement.why),
            ),
            Verdict::Worse => match self.remediation.plan_revert(object, record) {
                Ok(mut undo) => {
                    json_patch::merge(&mut undo.patch, &marker);
                    verification.undone = true;
                    record.reverted = Some(Reversal {
                        at: now,
                        trace_id: trace_id.clone(),
                        reason: format!("verification: {}", judgement.why),
                        requested_by: None,
                    });
                    let reason =
                        format!("{}; undone ({}) and {handed}", judgement.why, undo.summary);
                    undo.action = "Undone";
                    (undo, reason)
                }
                Err(refusal) => {
                    let why = match refusal {
                        crate::remediation::Refusal::Skip(why)
                        | crate::remediation::Refusal::Hold(why)
                        | crate::remediation::Refusal::Fail(why) => why,
                    };
                    (
                        Plan {
                            patch: marker,
                            summary: format!("worse; not undone; {handed}"),
                            action: "NotRecovered",
                            previous: None,
                            applied: None,
                        },
                        format!("{}; not undone ({why}); {handed}", judgement.why),
                    )
                }
            },
        }
    }
}

fn state_name(verification: &Verification) -> String {
    serde_json::to_value(verification.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}
