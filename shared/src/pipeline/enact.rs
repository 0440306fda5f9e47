//! Enactment: the guarded write of one object, as a small state machine.
//!
//! ```text
//! Read ──object──> Decide ──a write──> Spend ──slots──> Write ──answered──> Done
//!  │                          ├─ 409 ──────────> Conflict ──backoff──> Read
//!  │                          ├─ transient ────> Transient ─backoff──> Read (finds the write if it landed)
//!  │                          └─ cut / failed ─> LostAnswer ─one read─> Done
//!  ├─ transient read failure ─> Transient
//!  └─ deadline, not found, brakes, budget, sixth read ─────> Done
//! ```
//!
//! Every read decides afresh (brakes, [`Step`], budgets), so a conflict or a retry never
//! writes what an older object called for. A write whose answer was lost is recognised by
//! the record it carried ([`WriteLoop::landed`], the one confirm path), on the next read or
//! on one read in the time kept for it.

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::Value;
use tracing::instrument;

use super::audit::EventNote;
use super::bookkeeping::{Step, Write};
use super::retry::{
    MAX_TRANSIENT_RETRIES, MAX_WRITE_ATTEMPTS, conflict_backoff, transient_backoff,
};
use super::spending::Spending;
use super::targets::Shared;
use super::timebox::{CONFIRM_READ_TIME, Call, TimeBox};
use super::{Pipeline, Request, Subject};
use crate::cluster::record;
use crate::error::Error;
use crate::guard::pause;
use crate::guard::skip::SkipReason;
use crate::remediation::Remediation;
use crate::report::Outcome;

/// Where the write loop of one object is.
enum State {
    /// Read the object and decide (again) what to write; `unanswered` is an earlier write
    /// whose answer was lost, reported if the object carries it.
    Read { unanswered: Option<Sent> },
    /// Decide on the object just read: the brakes, the request's [`Step`].
    Decide(Box<DynamicObject>),
    /// Take what the write decided on spends of the budgets (waiting, in a storm, for the
    /// invocation's other targets to decide).
    Spend(Box<Write>),
    /// Send the guarded write decided on.
    Write(Box<Write>),
    /// The write was refused with 409: back off, then read and decide again.
    Conflict,
    /// A call failed in a way a retry may fix (retries are left): back off, read again.
    Transient {
        error: Error,
        unanswered: Option<Sent>,
    },
    /// A write's answer is lost for good: one read says whether it landed.
    LostAnswer { sent: Sent, lost: Lost },
    /// Finished.
    Done(End),
}

/// How the write loop ends.
struct End {
    /// The object's outcome.
    outcome: Outcome,
    /// A change landed, or may have: nothing it spent is given back.
    landed: bool,
}

impl End {
    fn settled(outcome: Outcome) -> State {
        State::Done(End {
            outcome,
            landed: false,
        })
    }

    fn landed(outcome: Outcome) -> State {
        State::Done(End {
            outcome,
            landed: true,
        })
    }
}

/// A write that got no answer: the record it carried, and what it comes to if it landed.
struct Sent {
    record: String,
    outcome: Outcome,
    event: EventNote,
    verify: Option<Box<crate::verify::VerifyRequest>>,
}

/// How a write's answer was lost for good.
enum Lost {
    /// Cut at the deadline with the write in flight.
    Cut(Error),
    /// Failed with no retry left, or in a way no retry fixes.
    Failed(Error),
}

/// The write loop of one object and what it holds across its states.
struct WriteLoop<'a, R: Remediation> {
    pipeline: &'a Pipeline<R>,
    api: &'a Api<DynamicObject>,
    client: &'a kube::Client,
    at: &'a Subject<'a, R>,
    /// What the invocation's targets share: the brakes, the changed count, the slot book.
    shared: &'a Shared,
    timebox: TimeBox,
    /// Reads made, against [`MAX_WRITE_ATTEMPTS`].
    reads: u32,
    /// Transient failures retried, against [`MAX_TRANSIENT_RETRIES`].
    transient_retries: u32,
    /// The operator's brakes, read once the object is, for alerts only (a revert is a
    /// person's own request).
    brakes: Option<pause::Brakes>,
    /// What the attempt spent of the budgets.
    spending: Spending,
}

impl<R: Remediation> Pipeline<R> {
    /// Works on one object; what it took of the budgets is given back if no change landed.
    #[instrument(
        name = "enact",
        skip_all,
        fields(trace_id = %at.invocation.trace_id, alert = at.alert(), target = %at.target)
    )]
    pub(super) async fn act_on(
        &self,
        api: &Api<DynamicObject>,
        client: &kube::Client,
        at: &Subject<'_, R>,
        shared: &Shared,
    ) -> Outcome {
        let mut machine = WriteLoop {
            pipeline: self,
            api,
            client,
            at,
            shared,
            timebox: self.timebox(at.invocation),
            reads: 0,
            transient_retries: 0,
            brakes: None,
            spending: Spending::default(),
        };
        let end = machine.run().await;
        if !end.landed {
            // Boxed: inline, a budget write's future would be part of every target's state
            // while it waits for its slot.
            Box::pin(self.give_back(client, at.invocation, &shared.changed, machine.spending))
                .await;
        }
        end.outcome.on(&at.target)
    }
}

impl<R: Remediation> WriteLoop<'_, R> {
    async fn run(&mut self) -> End {
        let mut state = State::Read { unanswered: None };
        loop {
            state = match state {
                // Each state's future is boxed while it runs and dropped before the next
                // one starts: a target waiting for its budget slot (with hundreds of others
                // in a storm) then holds only the small future of `spend`, not the read's,
                // the decision's or a whole write and its confirmation.
                State::Read { unanswered } => Box::pin(self.read(unanswered)).await,
                State::Decide(object) => Box::pin(self.decide(*object)).await,
                State::Spend(write) => Box::pin(self.spend(write)).await,
                State::Write(write) => Box::pin(self.write(*write)).await,
                State::Conflict => {
                    let attempt = self.reads - 1;
                    tracing::info!(attempt, "write conflict; re-reading and deciding again");
                    tokio::time::sleep(conflict_backoff(attempt)).await;
                    State::Read { unanswered: None }
                }
                State::Transient { error, unanswered } => {
                    let wait = transient_backoff(&error, self.transient_retries);
                    tokio::time::sleep(wait).await;
                    State::Read { unanswered }
                }
                State::LostAnswer { sent, lost } => Box::pin(self.confirm(sent, lost)).await,
                State::Done(end) => return end,
            };
        }
    }

    /// Read: the object, fresh; an unanswered write it carries is reported, else the
    /// request is decided again on it.
    async fn read(&mut self, unanswered: Option<Sent>) -> State {
        let at = self.at;
        let target = &at.target;
        if self.reads == MAX_WRITE_ATTEMPTS {
            return self.failed(Error::ConflictStorm {
                target: target.clone(),
                attempts: MAX_WRITE_ATTEMPTS,
            });
        }
        self.reads += 1;
        let read = Box::pin(self.api.get_opt(at.name));
        let got = match self
            .timebox
            .call(Call::Read, &format!("get {target}"), read)
            .await
        {
            Ok(got) => got,
            Err(cut) => return self.out_of_time(cut, unanswered.is_some()),
        };
        let object = match got {
            Ok(Some(object)) => object,
            // A revert sent to every cluster finds the object in some only.
            Ok(None) if at.work.fanned_out => {
                let why = SkipReason::Declined(format!("{target} not found in this cluster"));
                return End::settled(Outcome::skipped(at.work.source.clone(), &why));
            }
            Ok(None) => return self.failed(Error::Plan(format!("{target} not found"))),
            Err(err) => {
                let error = Error::kube(format!("get {target}"), err);
                if self.may_retry(&error) {
                    return State::Transient { error, unanswered };
                }
                return self.failed(error);
            }
        };
        if let Some(sent) = unanswered
            && let Some(outcome) = self.landed(&object, sent).await
        {
            // Our own write landed; only its answer was lost. Report it, do not redo it.
            return End::landed(outcome);
        }
        State::Decide(Box::new(object))
    }

    /// Decide on a fresh read: the brakes, the request's [`Step`].
    async fn decide(&mut self, object: DynamicObject) -> State {
        let (at, pipeline) = (self.at, self.pipeline);
        if let Err(refused) = self.brakes(&object).await {
            return refused;
        }
        let step = match &at.work.request {
            Request::Alert {
                input,
                resolved: false,
            } => Box::pin(pipeline.firing_step(at, input, self.client, &object)).await,
            Request::Alert {
                input,
                resolved: true,
            } => pipeline.resolved_step(at, input, &object),
            Request::Revert(request) => pipeline.revert_step(at, request, &object),
            Request::Verify(verify) => Box::pin(pipeline.verify_step(at, verify, &object)).await,
        };
        match step {
            Step::Done(outcome) => End::settled(outcome),
            Step::Write(write) => State::Spend(Box::new(write)),
        }
    }

    /// Spend: the budgets' slots the write needs; refused when they are spent.
    async fn spend(&mut self, write: Box<Write>) -> State {
        let spent = self
            .pipeline
            .spend(
                self.client,
                self.at,
                self.shared,
                &write,
                &mut self.spending,
            )
            .await;
        match spent {
            Ok(()) => State::Write(write),
            Err(refused) => End::settled(refused),
        }
    }

    /// The pause switches, read once, for an alert; `Err` is the next state when they
    /// cannot be read or hold the object.
    async fn brakes(&mut self, object: &DynamicObject) -> Result<(), State> {
        let at = self.at;
        if !matches!(at.work.request, Request::Alert { .. }) {
            return Ok(());
        }
        // The object's namespace, and the alert's when the object lives elsewhere.
        let alert_namespace = at.work.locator.namespace.as_str();
        let mut namespaces = vec![at.namespace];
        if alert_namespace != at.namespace {
            namespaces.push(alert_namespace);
        }
        if self.brakes.is_none() {
            let cluster = at.work.locator.cluster.as_deref();
            let read = self.shared.brakes.read(cluster, self.client, &namespaces);
            let read = self
                .timebox
                .call(Call::Read, "read the pause switches", read)
                .await;
            match read.and_then(|read| read) {
                Ok(read) => self.brakes = Some(read),
                Err(error) if self.may_retry(&error) => {
                    return Err(State::Transient {
                        error,
                        unanswered: None,
                    });
                }
                Err(err) => return Err(self.failed(err)),
            }
        }
        let refusal = self.brakes.as_ref().and_then(|brakes| {
            let annotations = object.metadata.annotations.as_ref();
            let name = self.pipeline.remediation.name();
            pause::refusal(brakes, name, &at.target, annotations)
        });
        match refusal {
            Some(reason) => Err(End::settled(Outcome::skipped(
                at.work.source.clone(),
                &reason,
            ))),
            None => Ok(()),
        }
    }

    /// Write: the guarded patch. Its answer ends the loop, or leads to a conflict, a
    /// transient retry, or a lost answer to confirm.
    async fn write(&mut self, write: Write) -> State {
        let at = self.at;
        let target = &at.target;
        // Strict: a field the server does not know is refused, not dropped in silence
        // (its default), so `applied` never hides a part of the change that was lost.
        let params = PatchParams {
            field_manager: Some(record::FIELD_MANAGER.to_owned()),
            dry_run: write.dry_run,
            ..PatchParams::default()
        }
        .validation_strict();
        let body = Patch::Merge(&write.body);
        let patch = self.api.patch(at.name, &params, &body);
        let answer = self
            .timebox
            .call(Call::Write, &format!("patch {target}"), patch)
            .await;
        let write = write.sent_as();
        match answer {
            Ok(Ok(updated)) => {
                if !write.dry_run {
                    let pipeline = self.pipeline;
                    pipeline
                        .record_event(self.client, at, &updated, &write.event)
                        .await;
                    self.shared.schedule(at.work.order, write.verify);
                }
                State::Done(End {
                    outcome: write.outcome,
                    landed: !write.dry_run,
                })
            }
            Ok(Err(kube::Error::Api(status))) if status.code == 409 => State::Conflict,
            // Cut at the deadline with the write in flight: one read says whether it
            // landed, in the time kept for that.
            Err(cut) => match self.sent(write) {
                Some(sent) => State::LostAnswer {
                    sent,
                    lost: Lost::Cut(cut),
                },
                None => self.failed(cut),
            },
            Ok(Err(err)) => {
                let error = Error::kube(format!("patch {target}"), err);
                let sent = self.sent(write);
                // Safe to retry: the write is guarded by resourceVersion, so if the failed
                // attempt did land, the retry re-reads, finds this very record and reports
                // the write instead of making it again.
                if self.may_retry(&error) {
                    return State::Transient {
                        error,
                        unanswered: sent,
                    };
                }
                // No retry left, but the write may have landed: read once more before
                // calling it failed, or the Lambda retry would find the change, call it a
                // cooldown and it would never be reported.
                match sent {
                    Some(sent) => State::LostAnswer {
                        sent,
                        lost: Lost::Failed(error),
                    },
                    None => self.failed(error),
                }
            }
        }
    }

    /// LostAnswer: one fresh read, in the time kept back for exactly this (see
    /// [`TimeBox`]), says whether the write landed.
    async fn confirm(&self, sent: Sent, lost: Lost) -> State {
        let read = tokio::time::timeout(CONFIRM_READ_TIME, self.api.get_opt(self.at.name)).await;
        let known = match read {
            Ok(Ok(Some(object))) => Some(self.landed(&object, sent).await),
            _ => None,
        };
        let trace = |annotation: String| {
            format!(
                "the annotation {annotation} of {} names trace {} if it did",
                self.at.target, self.at.invocation.trace_id
            )
        };
        let annotation = record::record_annotation(self.pipeline.remediation.name());
        match (known, lost) {
            (Some(Some(outcome)), _) => End::landed(outcome),
            // A request cut on our side can still be in flight at the server: keep its
            // slot; the Lambda retry (same request id) recognises the change if it lands.
            (Some(None), Lost::Cut(cut)) => self.kept(Error::OutOfTime(format!(
                "{cut}; a re-read shows it had not landed (a request still in flight can land later: the Lambda retry re-reads and recognises it by its request id)"
            ))),
            (None, Lost::Cut(cut)) => self.kept(Error::OutOfTime(format!(
                "{cut}; it may have landed: {}",
                trace(annotation)
            ))),
            (Some(None), Lost::Failed(error)) => self.failed(error),
            (None, Lost::Failed(error)) => self.kept(error),
        }
    }

    /// The one confirm path: whether `object` carries exactly the record a write of ours
    /// sent; if so, that write's outcome, with its Event recorded now.
    async fn landed(&self, object: &DynamicObject, sent: Sent) -> Option<Outcome> {
        let remediation = self.pipeline.remediation.name();
        let stored = object
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(&record::record_annotation(remediation)));
        if stored != Some(&sent.record) {
            return None;
        }
        self.pipeline
            .record_event(self.client, self.at, object, &sent.event)
            .await;
        self.shared.schedule(self.at.work.order, sent.verify);
        Some(sent.outcome)
    }

    /// A write to confirm if its answer is lost: not a dry run, and carrying its record.
    fn sent(&self, write: Write) -> Option<Sent> {
        if write.dry_run {
            return None;
        }
        let remediation = self.pipeline.remediation.name();
        let record = sent_record(write.outcome.patch.as_ref()?, remediation)?;
        Some(Sent {
            record,
            outcome: write.outcome,
            event: write.event,
            verify: write.verify,
        })
    }

    /// Out of time before a read: failed, and kept if a write is still unanswered.
    fn out_of_time(&self, cut: Error, unanswered: bool) -> State {
        if !unanswered {
            return self.failed(cut);
        }
        let why = format!(
            "{cut}; an earlier write to {} got no answer and may have landed: its annotation {} names trace {} if it did",
            self.at.target,
            record::record_annotation(self.pipeline.remediation.name()),
            self.at.invocation.trace_id
        );
        self.kept(Error::OutOfTime(why))
    }

    /// Whether a failed call is retried: retryable, with a retry left (which it takes).
    fn may_retry(&mut self, error: &Error) -> bool {
        let retry = error.is_retryable() && self.transient_retries < MAX_TRANSIENT_RETRIES;
        if retry {
            self.transient_retries += 1;
        }
        retry
    }

    /// Failed, and nothing changed: what was spent is given back.
    fn failed(&self, error: Error) -> State {
        End::settled(Outcome::failed(self.at.work.source.clone(), &error))
    }

    /// Failed, but a change may have landed: what was spent is kept.
    fn kept(&self, error: Error) -> State {
        End::landed(Outcome::failed(self.at.work.source.clone(), &error))
    }
}

/// The action record a write carries (the annotation value, unique to this invocation).
fn sent_record(body: &Value, remediation: &str) -> Option<String> {
    body.pointer("/metadata/annotations")?
        .get(record::record_annotation(remediation))?
        .as_str()
        .map(str::to_owned)
}
