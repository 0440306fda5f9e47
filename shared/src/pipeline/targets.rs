//! Targets: the work grouped by locator (one alert acts on an object, the rest are its
//! duplicates), and the objects each locator names in its cluster, each handed to enact.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use kube::api::{Api, DynamicObject, ListParams};
use tokio::sync::Semaphore;
use tracing::instrument;

use super::retry::{MAX_TRANSIENT_RETRIES, transient_backoff};
use super::slots::{SlotBook, Turn};
use super::timebox::Call;
use super::{Invocation, Pipeline, Request, Subject, Work, merge};
use crate::cluster::record;
use crate::error::Error;
use crate::guard::pause::BrakeReads;
use crate::guard::skip::SkipReason;
use crate::remediation::Remediation;
use crate::report::Outcome;

/// What the targets of one invocation share.
pub(super) struct Shared {
    /// Objects changed so far, against `MAX_TARGETS_PER_INVOCATION`.
    pub(super) changed: AtomicUsize,
    /// The operator's brakes, read once per cluster and namespace.
    pub(super) brakes: BrakeReads,
    /// The budget slots asked for, taken in bulk.
    pub(super) slots: Arc<SlotBook>,
    /// Verifications to schedule once every target is done, with their alert's order.
    pub(super) to_verify: std::sync::Mutex<Vec<(usize, crate::verify::VerifyRequest)>>,
}

impl Shared {
    /// Keeps `request` (a landed change's verification) for scheduling.
    pub(super) fn schedule(
        &self,
        order: usize,
        request: Option<Box<crate::verify::VerifyRequest>>,
    ) {
        if let Some(request) = request {
            let mut queued = self
                .to_verify
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            queued.push((order, *request));
        }
    }
}

impl<R: Remediation> Pipeline<R> {
    /// Works every target, up to `MAX_CONCURRENCY` at a time (a target waiting for a
    /// budget slot gives up its turn): one outcome per piece of work, with its alert's order.
    pub(super) async fn act_on_targets(
        &self,
        work: Vec<Work<R>>,
        invocation: &Invocation,
    ) -> Vec<(usize, Outcome)> {
        let mut groups: BTreeMap<String, Vec<Work<R>>> = BTreeMap::new();
        for item in work {
            groups.entry(item.locator.key()).or_default().push(item);
        }
        let shared = Shared {
            changed: AtomicUsize::new(0),
            brakes: BrakeReads::default(),
            slots: SlotBook::new(
                self.remediation.name(),
                &self.config.policy.budget,
                self.timebox(invocation),
            ),
            to_verify: std::sync::Mutex::default(),
        };
        let turns = Arc::new(Semaphore::new(self.config.max_concurrency.max(1)));
        let targets = groups.into_values().map(|items| {
            // Counted from the start, so that slots are taken once every target that will
            // need one has asked.
            let cluster = items.first().and_then(|w| w.locator.cluster.clone());
            let entered = shared.slots.enter(cluster);
            let (turns, shared) = (&turns, &shared);
            async move {
                let _entered = entered;
                let turn = Turn::take(turns).await;
                // Boxed once it has its turn: a target still queued for one holds a few
                // words, not the whole write loop's state (a storm queues hundreds).
                Box::pin(self.handle_target(items, invocation, shared, &turn)).await
            }
        });
        let mut outcomes: Vec<(usize, Outcome)> = futures::future::join_all(targets)
            .await
            .into_iter()
            .flatten()
            .collect();
        let landed = std::mem::take(
            &mut *shared
                .to_verify
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        self.schedule_verifications(landed, &mut outcomes, invocation)
            .await;
        outcomes
    }

    /// Handles every alert aimed at one locator: the first firing alert (else the first
    /// resolved one) is acted on; the rest are duplicates of it.
    async fn handle_target(
        &self,
        mut items: Vec<Work<R>>,
        invocation: &Invocation,
        shared: &Shared,
        turn: &Turn,
    ) -> Vec<(usize, Outcome)> {
        items.sort_by_key(|w| (w.resolved(), w.order));
        let mut items = items.into_iter();
        let Some(primary) = items.next() else {
            return Vec::new();
        };
        let handled_by = primary.fingerprint().to_owned();
        let mut out: Vec<(usize, Outcome)> = items
            .map(|dup| {
                let reason = SkipReason::Duplicate {
                    handled_by: crate::intake::names::printable(&handled_by),
                };
                (dup.order, Outcome::skipped(dup.source, &reason))
            })
            .collect();
        let outcome = self.act(&primary, invocation, shared, turn).await;
        out.push((primary.order, outcome));
        out
    }

    /// One locator's outcome, tagged with its cluster when several are served.
    #[instrument(
        name = "target",
        skip_all,
        fields(trace_id = %invocation.trace_id, alert = work.source.alert.as_deref(), target)
    )]
    async fn act(
        &self,
        work: &Work<R>,
        invocation: &Invocation,
        shared: &Shared,
        turn: &Turn,
    ) -> Outcome {
        let locator = &work.locator;
        let namespace = if locator.everywhere {
            "*"
        } else {
            &locator.namespace
        };
        let subject =
            self.describe_target(locator, namespace, locator.name.as_deref().unwrap_or("*"));
        tracing::Span::current().record("target", subject.as_str());
        let outcome = match self.timebox(invocation).check(&subject) {
            Err(err) => Outcome::failed(work.source.clone(), &err).on(&subject),
            Ok(()) => {
                self.act_in_cluster(work, invocation, shared, turn, &subject)
                    .await
            }
        };
        match &locator.cluster {
            Some(cluster) if self.config.clusters.several() => outcome.in_cluster(cluster),
            _ => outcome,
        }
    }

    /// Connects to the locator's cluster, finds the objects it names and works each one.
    async fn act_in_cluster(
        &self,
        work: &Work<R>,
        invocation: &Invocation,
        shared: &Shared,
        turn: &Turn,
        subject: &str,
    ) -> Outcome {
        let failed = |err: &Error| Outcome::failed(work.source.clone(), err).on(subject);
        let locator = &work.locator;
        let connector = match self.connections.get(locator.cluster.as_deref()) {
            Ok(connector) => connector,
            Err(err) => return failed(&err),
        };
        // Boxed: a client's first build (EKS token, TLS) is a large future, and each
        // target's state holds its largest one while it waits for its budget slot.
        let client = match Box::pin(connector.client()).await {
            Ok(client) => client,
            Err(err) => return failed(&err),
        };
        let names = match Box::pin(self.names(&client, work, invocation, subject)).await {
            Ok(names) => names,
            Err(outcome) => return *outcome,
        };
        let mut outcomes = Vec::with_capacity(names.len());
        for (namespace, name) in &names {
            let api: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), namespace, &locator.resource);
            let at = Subject {
                work,
                namespace,
                name,
                target: self.describe_target(locator, namespace, name),
                invocation,
                turn,
            };
            outcomes.push(Box::pin(self.act_on(&api, &client, &at, shared)).await);
        }
        merge::merge_outcomes(outcomes)
    }

    /// The objects (namespace, name) a locator names: its one name, or the opted-in objects
    /// the remediation selects, in the locator's namespace or in every one; `Err` is the
    /// outcome when there are none or they cannot be listed.
    async fn names(
        &self,
        client: &kube::Client,
        work: &Work<R>,
        invocation: &Invocation,
        subject: &str,
    ) -> Result<Vec<(String, String)>, Box<Outcome>> {
        let locator = &work.locator;
        if let Some(name) = &locator.name {
            return Ok(vec![(locator.namespace.clone(), name.clone())]);
        }
        let api: Api<DynamicObject> = if locator.everywhere {
            Api::all_with(client.clone(), &locator.resource)
        } else {
            Api::namespaced_with(client.clone(), &locator.namespace, &locator.resource)
        };
        // A list is a read: a transient failure is retried here, so one alert's other
        // locators (a region split beside its drain) do not act while this one gives up.
        let mut retries = 0;
        let listed = loop {
            let listed = self
                .timebox(invocation)
                .call(
                    Call::Read,
                    &format!("list {subject}"),
                    self.select(&api, work),
                )
                .await
                .and_then(|listed| listed);
            match listed {
                Err(err)
                    if err.is_retryable()
                        && !matches!(err, Error::OutOfTime(_))
                        && retries < MAX_TRANSIENT_RETRIES =>
                {
                    tracing::info!(retries, error = %err, "list failed; retrying");
                    tokio::time::sleep(transient_backoff(&err, retries)).await;
                    retries += 1;
                }
                listed => break listed,
            }
        };
        match listed {
            Ok(names) if names.is_empty() => {
                let place = if locator.everywhere {
                    "any namespace".to_owned()
                } else {
                    format!("namespace {}", locator.namespace)
                };
                let why = format!(
                    "no {} in {place} labelled auto_remediation=active matches the alert",
                    locator.resource.kind
                );
                // The alert keeps firing and nothing here acts on it: a person must
                // opt the right object in or fix the alert's labels.
                let held = Outcome::skipped(work.source.clone(), &SkipReason::Held(why));
                Err(Box::new(held.on(subject)))
            }
            Ok(names) => Ok(names),
            Err(err) => Err(Box::new(
                Outcome::failed(work.source.clone(), &err).on(subject),
            )),
        }
    }

    async fn select(
        &self,
        api: &Api<DynamicObject>,
        work: &Work<R>,
    ) -> Result<Vec<(String, String)>, Error> {
        let changeable = self.config.policy.namespaces();
        let selector = format!("{}={}", record::OPT_IN_LABEL, record::OPT_IN_VALUE);
        let list = api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|err| Error::kube(format!("list {}", work.locator.resource.plural), err))?;
        Ok(list
            .items
            .iter()
            .filter(|obj| match &work.request {
                Request::Alert { input, .. } => self.remediation.selects(input, obj),
                Request::Revert(_) | Request::Verify(_) => true,
            })
            // Opted-in objects in namespaces the policy closes are not targets (planning
            // counts them as unchangeable and refuses where that matters).
            .filter(|obj| {
                let namespace = obj.metadata.namespace.as_deref().unwrap_or_default();
                changeable.closed(namespace).is_none()
            })
            .filter_map(|obj| {
                let namespace = obj
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| work.locator.namespace.clone());
                Some((namespace, obj.metadata.name.clone()?))
            })
            .collect())
    }
}
