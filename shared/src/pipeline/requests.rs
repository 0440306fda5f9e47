//! Intake stage of the pipeline: parse, validate and screen. What needs no API call is
//! settled here; the rest becomes [`Work`]. Input: the event; output: an [`Intake`].

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::OnceCell;
use tracing::instrument;

use super::{Invocation, Pipeline, Request, Work};
use crate::error::Error;
use crate::guard::clusters::Route;
use crate::guard::decide::{self, Gate};
use crate::guard::skip::SkipReason;
use crate::intake::alert::{Alert, AlertGroup};
use crate::intake::{self, AlertInput, Rejection, RevertDelivery};
use crate::remediation::{Locator, Remediation};
use crate::report::{Outcome, Source};

/// What intake makes of an event.
pub(super) struct Intake<R: Remediation> {
    /// Outcomes settled without an API call, with their alert's order.
    pub(super) settled: Vec<(usize, Outcome)>,
    /// Requests that await their targets.
    pub(super) work: Vec<Work<R>>,
}

impl<R: Remediation> Intake<R> {
    fn new() -> Self {
        Intake {
            settled: Vec::new(),
            work: Vec::new(),
        }
    }

    /// Only this outcome, for the event's one request.
    fn settled(outcome: Outcome) -> Self {
        let mut intake = Self::new();
        intake.settled.push((0, outcome));
        intake
    }
}

/// One alert as delivered: its place in the event, where it came from and when.
struct Delivered<'a> {
    order: usize,
    alert: &'a Alert,
    source: Source,
    published_at: Option<DateTime<Utc>>,
}

/// Observations shared by alerts with the same key (see `Remediation::observation_key`).
type Observations<R> = HashMap<String, Observation<R>>;

impl<R: Remediation> Pipeline<R> {
    /// Parses, validates and screens; settles every alert that needs no API call.
    #[instrument(name = "intake", skip_all, fields(trace_id = %invocation.trace_id))]
    pub(super) fn intake(&self, event: &Value, invocation: &Invocation) -> Intake<R> {
        let deliveries = match intake::parse_event(event, self.config.alert_topic_arn.as_deref()) {
            Ok(deliveries) => deliveries,
            Err(err) => return Intake::settled(Outcome::failed(Source::default(), &err)),
        };
        let mut intake = Intake::new();
        let mut order = 0;
        let mut observations = Observations::<R>::new();
        for delivery in deliveries {
            let base = Source {
                message_id: delivery.message_id.clone(),
                ..Source::default()
            };
            let group = match delivery.content {
                Ok(group) => group,
                Err(err) => {
                    intake.settled.push((order, Outcome::failed(base, &err)));
                    order += 1;
                    continue;
                }
            };
            for outcome in group_outcomes(&group, &base) {
                intake.settled.push((order, outcome));
                order += 1;
            }
            for alert in &group.alerts {
                let delivered = Delivered {
                    order,
                    alert,
                    source: Source::for_alert(&base, alert, group.external_url.as_deref()),
                    published_at: delivery.published_at,
                };
                match self.intake_alert(delivered, invocation, &mut observations) {
                    Ok(mut work) => intake.work.append(&mut work),
                    Err(outcome) => intake.settled.push((order, *outcome)),
                }
                order += 1;
            }
        }
        intake
    }

    /// Validates, routes and screens one alert: the work it makes, or its outcome.
    fn intake_alert(
        &self,
        delivered: Delivered<'_>,
        invocation: &Invocation,
        observations: &mut Observations<R>,
    ) -> Result<Vec<Work<R>>, Box<Outcome>> {
        let Delivered {
            order,
            alert,
            mut source,
            published_at,
        } = delivered;
        let input = match intake::validate_alert(alert, self.remediation.name()) {
            Ok(input) => input,
            Err(Rejection::Invalid(why)) => {
                return Err(Box::new(Outcome::failed(source, &Error::Input(why))));
            }
            Err(Rejection::OtherFunction(why)) => {
                let reason = SkipReason::OtherFunction(why);
                return Err(Box::new(Outcome::skipped(source, &reason)));
            }
        };
        source.namespace = Some(input.namespace.clone());
        let clusters = match self.alert_clusters(&input) {
            Ok(clusters) => clusters,
            Err(refused) => return Err(Box::new(refused.outcome(source))),
        };
        let resolved =
            match decide::screen(&input, published_at, &self.config.policy, invocation.now) {
                Gate::Firing => false,
                Gate::Resolved => true,
                Gate::Skip(reason) => return Err(Box::new(Outcome::skipped(source, &reason))),
            };
        let locators = match self.remediation.targets(&input, &self.config) {
            Ok(locators) if !locators.is_empty() => locators,
            Ok(_) => {
                let err = Error::Input("the alert names no target".into());
                return Err(Box::new(Outcome::failed(source, &err)));
            }
            Err(why) => return Err(Box::new(Outcome::failed(source, &Error::Input(why)))),
        };
        // Observed once for the alert (or its key); facts once per cluster.
        let observed = match self.remediation.observation_key(&input) {
            Some(key) => observations.entry(key).or_default().clone(),
            None => Observation::<R>::default(),
        };
        let mut work = Vec::with_capacity(clusters.len() * locators.len());
        for cluster in clusters {
            let facts = Arc::new(OnceCell::new());
            for locator in &locators {
                work.push(Work {
                    order,
                    source: source.clone(),
                    locator: Locator {
                        cluster: cluster.clone(),
                        ..locator.clone()
                    },
                    request: Request::Alert {
                        input: input.clone(),
                        resolved,
                    },
                    observed: observed.clone(),
                    facts: facts.clone(),
                    fanned_out: false,
                });
            }
        }
        Ok(work)
    }

    /// The clusters an alert is acted on in: the one its `cluster` label names, every
    /// mesh cluster for a mesh-wide remediation, or why none.
    fn alert_clusters(&self, input: &AlertInput) -> Result<Vec<Option<String>>, Refused> {
        let route = self.config.clusters.route(input.alert.label("cluster"));
        match &route {
            Route::Skip(reason) => Err(Refused::Skip(reason.clone())),
            Route::Unknown(why) => Err(Refused::Fail(Error::Input(format!(
                "{why}; an alert names its cluster with the `cluster` label (a Prometheus external label)"
            )))),
            Route::Default | Route::One(_) if self.remediation.mesh_wide() => {
                Ok(self.config.clusters.mesh_targets(&route))
            }
            Route::Default => Ok(vec![None]),
            Route::One(name) => Ok(vec![Some(name.clone())]),
        }
    }

    /// Validates and screens a revert request; it becomes one piece of work on one object.
    #[instrument(name = "intake", skip_all, fields(trace_id = %invocation.trace_id))]
    pub(super) fn intake_revert(
        &self,
        delivery: RevertDelivery,
        invocation: &Invocation,
    ) -> Intake<R> {
        let mut source = Source {
            message_id: delivery.message_id,
            alert: Some("RevertRequest".into()),
            ..Source::default()
        };
        let request = match delivery.request.and_then(|request| {
            intake::validate_revert(&request, self.remediation.name())
                .map(|()| request)
                .map_err(Error::Input)
        }) {
            Ok(request) => request,
            Err(err) => return Intake::settled(Outcome::failed(source, &err)),
        };
        source.namespace = Some(request.namespace.clone());
        let clusters = match self.revert_clusters(request.cluster.as_deref()) {
            Ok(clusters) => clusters,
            Err(refused) => return Intake::settled(refused.outcome(source)),
        };
        let screened = decide::Request {
            namespace: &request.namespace,
            published_at: delivery.published_at,
        };
        if let Some(reason) = decide::screen_request(&screened, &self.config.policy, invocation.now)
        {
            return Intake::settled(Outcome::skipped(source, &reason));
        }
        let revertible = self.remediation.revertible(&self.config);
        let Some(resource) = revertible.iter().find(|r| r.kind == request.kind).cloned() else {
            let kinds: Vec<&str> = revertible.iter().map(|r| r.kind.as_str()).collect();
            let why = if kinds.is_empty() {
                format!("{} changes cannot be reverted", self.remediation.name())
            } else {
                format!(
                    "{} reverts {} objects, not {}",
                    self.remediation.name(),
                    kinds.join(" and "),
                    crate::intake::names::printable(&request.kind)
                )
            };
            return Intake::settled(Outcome::failed(source, &Error::Input(why)));
        };
        let fanned_out = clusters.len() > 1;
        let mut intake = Intake::new();
        for cluster in clusters {
            intake.work.push(Work {
                order: 0,
                source: source.clone(),
                locator: Locator {
                    resource: resource.clone(),
                    namespace: request.namespace.clone(),
                    name: Some(request.name.clone()),
                    everywhere: false,
                    subject: None,
                    cluster,
                },
                request: Request::Revert(request.clone()),
                observed: Arc::new(OnceCell::new()),
                facts: Arc::new(OnceCell::new()),
                fanned_out,
            });
        }
        intake
    }

    /// The clusters a revert request goes to: the one it names, or every listed cluster
    /// for `all`. With several clusters served it must say which.
    fn revert_clusters(&self, named: Option<&str>) -> Result<Vec<Option<String>>, Refused> {
        if named == Some(ALL_CLUSTERS) {
            return Ok(self.config.clusters.all());
        }
        match self.config.clusters.route(named) {
            Route::Default => Ok(vec![None]),
            Route::One(name) => Ok(vec![Some(name)]),
            Route::Skip(reason) => Err(Refused::Skip(reason)),
            Route::Unknown(why) => Err(Refused::Fail(Error::Input(format!(
                "{why}; a revert request names its cluster, or \"{ALL_CLUSTERS}\" for every one"
            )))),
        }
    }
}

/// One observation outside the clusters, shared by the work it was made for.
type Observation<R> = Arc<OnceCell<crate::Result<<R as Remediation>::Observed>>>;

/// What a revert request's `cluster` says to revert in every cluster served.
pub const ALL_CLUSTERS: &str = "all";

/// What a delivery says about its alerts as a whole: an empty message fails, and alerts
/// the template left out are reported as such.
fn group_outcomes(group: &AlertGroup, base: &Source) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    if group.alerts.is_empty() && group.truncated_alerts == 0 {
        let err = Error::Input("Alertmanager message holds no alerts".into());
        outcomes.push(Outcome::failed(base.clone(), &err));
    }
    if group.truncated_alerts > 0 {
        let reason = SkipReason::AlertsOmitted(group.truncated_alerts);
        outcomes.push(Outcome::skipped(base.clone(), &reason));
    }
    outcomes
}

/// Why an alert or request is not acted on in any cluster.
enum Refused {
    /// Not for this deployment.
    Skip(SkipReason),
    /// Cannot be told.
    Fail(Error),
}

impl Refused {
    fn outcome(self, source: Source) -> Outcome {
        match self {
            Refused::Skip(reason) => Outcome::skipped(source, &reason),
            Refused::Fail(err) => Outcome::failed(source, &err),
        }
    }
}
