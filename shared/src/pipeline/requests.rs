//! Intake stage of the pipeline: parse, validate and screen; what needs no API call is
//! settled here, the rest becomes [`Work`].

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::OnceCell;

use super::{Invocation, Pipeline, Request, Work};
use crate::clusters::Route;
use crate::decide::{self, Gate};
use crate::error::Error;
use crate::intake::{self, Rejection, RevertDelivery};
use crate::remediation::{Locator, Remediation};
use crate::report::{Outcome, Source};
use crate::skip::SkipReason;

impl<R: Remediation> Pipeline<R> {
    /// Parses, validates and screens; settles every alert that needs no API call.
    pub(super) fn intake(
        &self,
        event: &Value,
        invocation: &Invocation,
        outcomes: &mut Vec<(usize, Outcome)>,
        work: &mut Vec<Work<R>>,
    ) {
        let deliveries = match intake::parse_event(event, self.config.alert_topic_arn.as_deref()) {
            Ok(deliveries) => deliveries,
            Err(err) => {
                outcomes.push((0, Outcome::failed(Source::default(), &err)));
                return;
            }
        };
        let mut order = 0;
        // Observations shared by alerts with the same key (see `Remediation::observation_key`).
        let mut observations: HashMap<String, Observation<R>> = HashMap::new();
        for delivery in deliveries {
            let base = Source {
                message_id: delivery.message_id.clone(),
                ..Source::default()
            };
            let group = match delivery.content {
                Ok(group) => group,
                Err(err) => {
                    outcomes.push((order, Outcome::failed(base, &err)));
                    order += 1;
                    continue;
                }
            };
            if group.alerts.is_empty() && group.truncated_alerts == 0 {
                let err = Error::Input("Alertmanager message holds no alerts".into());
                outcomes.push((order, Outcome::failed(base.clone(), &err)));
                order += 1;
            }
            if group.truncated_alerts > 0 {
                let reason = SkipReason::AlertsOmitted(group.truncated_alerts);
                outcomes.push((order, Outcome::skipped(base.clone(), &reason)));
                order += 1;
            }
            for alert in &group.alerts {
                let mut source = Source::for_alert(&base, alert, group.external_url.as_deref());
                let this = order;
                order += 1;
                let input = match intake::validate_alert(alert, self.remediation.name()) {
                    Ok(input) => input,
                    Err(Rejection::Invalid(why)) => {
                        outcomes.push((this, Outcome::failed(source, &Error::Input(why))));
                        continue;
                    }
                    Err(Rejection::OtherFunction(why)) => {
                        let reason = SkipReason::OtherFunction(why);
                        outcomes.push((this, Outcome::skipped(source, &reason)));
                        continue;
                    }
                };
                source.namespace = Some(input.namespace.clone());
                let route = self.config.clusters.route(input.alert.label("cluster"));
                let clusters = match &route {
                    Route::Skip(reason) => {
                        outcomes.push((this, Outcome::skipped(source, reason)));
                        continue;
                    }
                    Route::Unknown(why) => {
                        let err = Error::Input(format!(
                            "{why}; an alert names its cluster with the `cluster` label (a Prometheus external label)"
                        ));
                        outcomes.push((this, Outcome::failed(source, &err)));
                        continue;
                    }
                    Route::Default | Route::One(_) if self.remediation.mesh_wide() => {
                        self.config.clusters.mesh_targets(&route)
                    }
                    Route::Default => vec![None],
                    Route::One(name) => vec![Some(name.clone())],
                };
                let resolved = match decide::screen(
                    &input,
                    delivery.published_at,
                    &self.config.policy,
                    invocation.now,
                ) {
                    Gate::Firing => false,
                    Gate::Resolved => true,
                    Gate::Skip(reason) => {
                        outcomes.push((this, Outcome::skipped(source, &reason)));
                        continue;
                    }
                };
                match self.remediation.targets(&input, &self.config) {
                    Ok(locators) if !locators.is_empty() => {
                        // Observed once for the alert (or its key); facts once per cluster.
                        let observed = match self.remediation.observation_key(&input) {
                            Some(key) => observations.entry(key).or_default().clone(),
                            None => Observation::<R>::default(),
                        };
                        for cluster in clusters {
                            let facts = Arc::new(OnceCell::new());
                            for locator in &locators {
                                work.push(Work {
                                    order: this,
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
                    }
                    Ok(_) => {
                        let err = Error::Input("the alert names no target".into());
                        outcomes.push((this, Outcome::failed(source, &err)));
                    }
                    Err(why) => outcomes.push((this, Outcome::failed(source, &Error::Input(why)))),
                }
            }
        }
    }

    /// Validates and screens a revert request; it becomes one piece of work on one object.
    pub(super) fn intake_revert(
        &self,
        delivery: RevertDelivery,
        invocation: &Invocation,
        outcomes: &mut Vec<(usize, Outcome)>,
        work: &mut Vec<Work<R>>,
    ) {
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
            Err(err) => return outcomes.push((0, Outcome::failed(source, &err))),
        };
        source.namespace = Some(request.namespace.clone());
        let clusters = match self.revert_clusters(request.cluster.as_deref()) {
            Ok(clusters) => clusters,
            Err(Ok(reason)) => return outcomes.push((0, Outcome::skipped(source, &reason))),
            Err(Err(err)) => return outcomes.push((0, Outcome::failed(source, &err))),
        };
        let screened = decide::Request {
            namespace: &request.namespace,
            published_at: delivery.published_at,
        };
        if let Some(reason) = decide::screen_request(&screened, &self.config.policy, invocation.now)
        {
            return outcomes.push((0, Outcome::skipped(source, &reason)));
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
                    crate::names::printable(&request.kind)
                )
            };
            return outcomes.push((0, Outcome::failed(source, &Error::Input(why))));
        };
        let fanned_out = clusters.len() > 1;
        for cluster in clusters {
            work.push(Work {
                order: 0,
                source: source.clone(),
                locator: Locator {
                    resource: resource.clone(),
                    namespace: request.namespace.clone(),
                    name: Some(request.name.clone()),
                    subject: None,
                    cluster,
                },
                request: Request::Revert(request.clone()),
                observed: Arc::new(OnceCell::new()),
                facts: Arc::new(OnceCell::new()),
                fanned_out,
            });
        }
    }

    /// The clusters a revert request goes to: the one it names, or every listed cluster
    /// for `all`. With several clusters served it must say which. `Err(Ok)`: not for this
    /// deployment; `Err(Err)`: cannot be told.
    fn revert_clusters(
        &self,
        named: Option<&str>,
    ) -> Result<Vec<Option<String>>, Result<SkipReason, Error>> {
        if named == Some(ALL_CLUSTERS) {
            return Ok(self.config.clusters.all());
        }
        match self.config.clusters.route(named) {
            Route::Default => Ok(vec![None]),
            Route::One(name) => Ok(vec![Some(name)]),
            Route::Skip(reason) => Err(Ok(reason)),
            Route::Unknown(why) => Err(Err(Error::Input(format!(
                "{why}; a revert request names its cluster, or \"{ALL_CLUSTERS}\" for every one"
            )))),
        }
    }
}

/// One observation outside the clusters, shared by the work it was made for.
type Observation<R> = Arc<OnceCell<crate::Result<<R as Remediation>::Observed>>>;

/// What a revert request's `cluster` says to revert in every cluster served.
pub const ALL_CLUSTERS: &str = "all";
