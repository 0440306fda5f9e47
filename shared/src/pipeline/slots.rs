//! Budget slots taken in bulk. A target that needs a slot waits, giving up its turn to run
//! (`MAX_CONCURRENCY`), until every unfinished target of its cluster in this invocation is
//! waiting too or done; then one guarded write takes the slots for all of them, in alert
//! order, as many as the budgets allow. A storm's targets thus read and decide first and
//! spend together: one write on the ConfigMap every concurrent invocation contends for,
//! instead of one per target (more only when another invocation wrote in between).
//!
//! The wait always ends: a target not waiting either holds a turn and is working (it will
//! wait or finish) or is queued for a turn that waiting targets have given up.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use super::timebox::{Call, TimeBox};
use crate::error::Error;
use crate::guard::budget::{self, Limits, Slot};
use crate::guard::skip::SkipReason;

/// A slot taken, a budget that refuses it, or why the budget could not be read or written
/// (shared by every target of the batch).
pub(super) type Answer = Result<Result<(), SkipReason>, Arc<Error>>;

/// One invocation's slot requests, per cluster (each keeps its budget in its own ConfigMap).
pub(super) struct SlotBook {
    function: &'static str,
    limits: Limits,
    timebox: TimeBox,
    clusters: Mutex<BTreeMap<Option<String>, Ledger>>,
}

#[derive(Default)]
struct Ledger {
    /// This cluster's targets not done yet.
    unfinished: usize,
    /// Their requests not yet written.
    waiting: Vec<Waiter>,
    /// A batch is being written.
    taking: bool,
    /// The cluster's client, from the first request.
    client: Option<kube::Client>,
}

struct Waiter {
    /// The alert's place in the invocation: the first ones get the slots a budget has left.
    order: usize,
    slot: Slot,
    answer: oneshot::Sender<Answer>,
}

/// A target of the book's cluster, counted until dropped.
pub(super) struct Entered {
    book: Arc<SlotBook>,
    cluster: Option<String>,
}

impl Drop for Entered {
    fn drop(&mut self) {
        let mut clusters = self.book.lock();
        if let Some(ledger) = clusters.get_mut(&self.cluster) {
            ledger.unfinished = ledger.unfinished.saturating_sub(1);
            self.book.take_when_all_wait(&self.cluster, ledger);
        }
    }
}

impl SlotBook {
    pub(super) fn new(function: &'static str, limits: &Limits, timebox: TimeBox) -> Arc<Self> {
        Arc::new(SlotBook {
            function,
            limits: limits.clone(),
            timebox,
            clusters: Mutex::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<Option<String>, Ledger>> {
        self.clusters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a target of `cluster` as unfinished until the guard is dropped.
    pub(super) fn enter(self: &Arc<Self>, cluster: Option<String>) -> Entered {
        self.lock().entry(cluster.clone()).or_default().unfinished += 1;
        Entered {
            book: Arc::clone(self),
            cluster,
        }
    }

    /// Asks for `slot` in `cluster`'s budget; waits, without its turn, for the batch.
    pub(super) async fn take(
        self: &Arc<Self>,
        cluster: Option<&str>,
        client: &kube::Client,
        order: usize,
        slot: Slot,
        turn: &Turn,
    ) -> Answer {
        let (answer, answered) = oneshot::channel();
        {
            let cluster = cluster.map(str::to_owned);
            let mut clusters = self.lock();
            let ledger = clusters.entry(cluster.clone()).or_default();
            ledger.client.get_or_insert_with(|| client.clone());
            ledger.waiting.push(Waiter {
                order,
                slot,
                answer,
            });
            self.take_when_all_wait(&cluster, ledger);
        }
        turn.give_up_while(answered).await.unwrap_or_else(|_| {
            Err(Arc::new(Error::Plan(
                "the budget slot request was dropped unanswered".into(),
            )))
        })
    }

    /// Starts writing the batch once every unfinished target of the cluster waits.
    fn take_when_all_wait(self: &Arc<Self>, cluster: &Option<String>, ledger: &mut Ledger) {
        // A request whose target was cut off (the deadline) no longer counts.
        ledger.waiting.retain(|w| !w.answer.is_closed());
        if ledger.taking || ledger.waiting.is_empty() || ledger.waiting.len() < ledger.unfinished {
            return;
        }
        let Some(client) = ledger.client.clone() else {
            return;
        };
        ledger.taking = true;
        let mut batch = std::mem::take(&mut ledger.waiting);
        batch.sort_by_key(|w| w.order);
        // A task of its own: a waiter cut off mid-write must not leave the batch half done.
        let book = Arc::clone(self);
        let cluster = cluster.clone();
        tokio::spawn(async move {
            book.write_batch(&client, batch).await;
            let mut clusters = book.lock();
            if let Some(ledger) = clusters.get_mut(&cluster) {
                ledger.taking = false;
                book.take_when_all_wait(&cluster, ledger);
            }
        });
    }

    async fn write_batch(&self, client: &kube::Client, batch: Vec<Waiter>) {
        let slots: Vec<Slot> = batch.iter().map(|w| w.slot.clone()).collect();
        let reserve = budget::reserve(client, &self.limits, self.function, &slots);
        let what = format!("take {} budget slot(s)", slots.len());
        let grant = match self.timebox.call(Call::Read, &what, reserve).await {
            Ok(Ok(grant)) => grant,
            Ok(Err(err)) | Err(err) => {
                let err = Arc::new(err);
                for waiter in batch {
                    let _ = waiter.answer.send(Err(Arc::clone(&err)));
                }
                return;
            }
        };
        let mut unclaimed = Vec::new();
        for (i, waiter) in batch.into_iter().enumerate() {
            let answer = match (&grant.refused, i < grant.granted) {
                (_, true) => Ok(()),
                (Some(refused), false) => Err(refused.clone()),
                (None, false) => Err(SkipReason::BudgetSpent("no slot granted".into())),
            };
            if waiter.answer.send(Ok(answer)).is_err() && i < grant.granted {
                unclaimed.push(waiter.slot);
            }
        }
        if !unclaimed.is_empty() {
            budget::release_all(client, &self.limits, self.function, &unclaimed).await;
        }
    }
}

/// A target's turn to run, one of `MAX_CONCURRENCY`; given up while it waits for a slot.
pub(super) struct Turn {
    turns: Arc<Semaphore>,
    held: Mutex<Option<OwnedSemaphorePermit>>,
}

impl Turn {
    /// Waits for a turn.
    pub(super) async fn take(turns: &Arc<Semaphore>) -> Turn {
        let held = Arc::clone(turns).acquire_owned().await.ok();
        Turn {
            turns: Arc::clone(turns),
            held: Mutex::new(held),
        }
    }

    /// Runs `wait` without the turn, then takes one again.
    async fn give_up_while<F: Future>(&self, wait: F) -> F::Output {
        drop(self.slot().take());
        let out = wait.await;
        let again = Arc::clone(&self.turns).acquire_owned().await.ok();
        *self.slot() = again;
        out
    }

    fn slot(&self) -> MutexGuard<'_, Option<OwnedSemaphorePermit>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
