//! Spending: a write that changes an object counts against `MAX_TARGETS_PER_INVOCATION`
//! and takes a slot in the cluster's budgets (in bulk with the invocation's other targets:
//! slots.rs), once per object; what it spent is given back when no change landed.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::bookkeeping::Write;
use super::targets::Shared;
use super::timebox::Call;
use super::{Invocation, Pipeline, Subject};
use crate::guard::budget;
use crate::guard::skip::SkipReason;
use crate::remediation::Remediation;
use crate::report::Outcome;

/// What one object's attempt spent of the budgets.
#[derive(Default)]
pub(super) struct Spending {
    /// Counted against `MAX_TARGETS_PER_INVOCATION`.
    counted: bool,
    /// The slot taken in the cluster's budgets.
    slot: Option<budget::Slot>,
}

impl<R: Remediation> Pipeline<R> {
    /// Spends what `write` needs and `spending` does not hold yet; `Err` is the outcome
    /// when a limit refuses it or the budget cannot be read.
    pub(super) async fn spend(
        &self,
        client: &kube::Client,
        at: &Subject<'_, R>,
        shared: &Shared,
        write: &Write,
        spending: &mut Spending,
    ) -> Result<(), Outcome> {
        let source = || at.work.source.clone();
        let changed = &shared.changed;
        if !write.counts_against_budget {
            return Ok(());
        }
        if !spending.counted {
            let max_targets = self.config.policy.max_targets;
            if changed.fetch_add(1, Ordering::SeqCst) >= max_targets {
                changed.fetch_sub(1, Ordering::SeqCst);
                let reason = SkipReason::BlastRadius { max_targets };
                return Err(Outcome::skipped(source(), &reason));
            }
            spending.counted = true;
        }
        let limits = &self.config.policy.budget;
        if write.dry_run || spending.slot.is_some() || !limits.enabled() {
            return Ok(());
        }
        let slot = budget::Slot {
            at: at.invocation.now,
            target: at.target.clone(),
            trace_id: at.invocation.trace_id.clone(),
        };
        let cluster = at.work.locator.cluster.as_deref();
        let taken = shared
            .slots
            .take(cluster, client, at.work.order, slot.clone(), at.turn);
        let answer = self
            .timebox(at.invocation)
            .call(Call::Read, "take a budget slot", taken)
            .await;
        match answer {
            Ok(Ok(Ok(()))) => {
                spending.slot = Some(slot);
                Ok(())
            }
            Ok(Ok(Err(spent))) => Err(Outcome::skipped(source(), &spent)),
            Ok(Err(err)) => Err(Outcome::failed(source(), &err)),
            Err(err) => Err(Outcome::failed(source(), &err)),
        }
    }

    /// Gives back what an attempt spent, for a change that did not land.
    pub(super) async fn give_back(
        &self,
        client: &kube::Client,
        invocation: &Invocation,
        changed: &AtomicUsize,
        spending: Spending,
    ) {
        if spending.counted {
            changed.fetch_sub(1, Ordering::SeqCst);
        }
        let Some(slot) = &spending.slot else {
            return;
        };
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
