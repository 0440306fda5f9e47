//! The shared pipeline for any [`Remediation`], one stage per module, data flowing one way:
//!
//! ```text
//! event -> intake  (requests.rs: parse, validate, screen)           -> Intake { settled, work }
//!       -> targets (targets.rs: the objects each piece of work names) -> a Subject per object
//!       -> decide  (bookkeeping.rs, undo.rs: object + its record)    -> Step
//!       -> enact   (enact.rs: the guarded write loop; retry.rs, spending.rs, slots.rs) -> Outcome
//!       -> audit   (audit.rs: the Kubernetes Event of a change)
//!       -> merge   (merge.rs: one outcome per alert)                 -> InvocationReport
//! ```
//!
//! A verify request (verify.rs) takes the same road: intake, its object, a decision on a
//! fresh read (the verdict), the guarded write of the record (and the undo of a worse
//! change), audit. Applied changes are scheduled for verification at the end.
//!
//! Every stage runs in a span carrying the invocation's `trace_id` (and the `alert` and
//! `target` where it has them): log lines inside a stage carry them, and no call passes
//! them by hand.

use std::time::Instant;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tracing::instrument;

use crate::cluster::connect::{Connections, KubeConnector};
use crate::config::Config;
use crate::intake;
use crate::remediation::{Locator, Remediation, describe};
use crate::report::InvocationReport;

mod audit;
mod bookkeeping;
mod enact;
mod merge;
mod requests;
mod retry;
mod slots;
mod spending;
mod targets;
mod timebox;
mod undo;
mod verify;
mod work;

use requests::Intake;
use timebox::TimeBox;
use work::{Request, Subject, Work};

pub use audit::event_resource;

/// Facts about one invocation.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// Lambda request id.
    pub request_id: String,
    /// Trace id (X-Ray root id when present, else the request id).
    pub trace_id: String,
    /// When Lambda will stop the invocation.
    pub deadline: Option<Instant>,
    /// The time decisions are made at.
    pub now: DateTime<Utc>,
}

impl Invocation {
    /// An invocation with a trace id taken from an X-Ray header value when present.
    pub fn new(request_id: &str, xray_trace_id: Option<&str>, deadline: Option<Instant>) -> Self {
        let trace_id = xray_trace_id
            .and_then(xray_root)
            .unwrap_or(request_id)
            .to_owned();
        Invocation {
            request_id: request_id.to_owned(),
            trace_id,
            deadline,
            now: Utc::now(),
        }
    }
}

/// `Root=1-5759e988-bd862e3fe1be46a994272793;Parent=..;Sampled=1` -> the root id.
fn xray_root(header: &str) -> Option<&str> {
    header
        .split(';')
        .find_map(|part| part.trim().strip_prefix("Root="))
        .filter(|root| !root.is_empty())
}

/// One remediation function's whole behaviour, minus the Lambda runtime.
pub struct Pipeline<R> {
    config: Config,
    remediation: R,
    connections: Connections,
    /// Verification of applied changes, when configured.
    verifier: Option<std::sync::Arc<crate::verify::Verifier>>,
}

impl<R: Remediation> Pipeline<R> {
    /// A pipeline for `remediation` with one connection for every request.
    pub fn new(config: Config, remediation: R, kube: std::sync::Arc<dyn KubeConnector>) -> Self {
        Self::with_connections(config, remediation, Connections::single(kube))
    }

    /// A pipeline for `remediation` with one connection per cluster.
    pub fn with_connections(config: Config, remediation: R, connections: Connections) -> Self {
        Pipeline {
            config,
            remediation,
            connections,
            verifier: None,
        }
    }

    /// Verifies applied changes with `verifier` (and judges verify requests).
    pub fn with_verifier(mut self, verifier: crate::verify::Verifier) -> Self {
        self.verifier = Some(std::sync::Arc::new(verifier));
        self
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Handles one event; every alert in it gets exactly one outcome in the report.
    #[instrument(
        name = "pipeline",
        skip_all,
        fields(trace_id = %invocation.trace_id, request_id = %invocation.request_id)
    )]
    pub async fn handle(&self, event: &Value, invocation: &Invocation) -> InvocationReport {
        let intake = self.take_in(event, invocation);
        self.act_and_report(intake, invocation).await
    }

    /// As [`Pipeline::handle`], dropping the event once it is read: a storm's event (its
    /// messages' text, hundreds of kilobytes) is not kept while the targets are worked.
    #[instrument(
        name = "pipeline",
        skip_all,
        fields(trace_id = %invocation.trace_id, request_id = %invocation.request_id)
    )]
    pub async fn handle_owned(&self, event: Value, invocation: &Invocation) -> InvocationReport {
        let intake = self.take_in(&event, invocation);
        drop(event);
        self.act_and_report(intake, invocation).await
    }

    /// The event read: what is settled already, and the work left.
    fn take_in(&self, event: &Value, invocation: &Invocation) -> Intake<R> {
        let alert_topic = self.config.alert_topic_arn.as_deref();
        let revert = intake::parse_revert(event, alert_topic);
        let verify = revert
            .is_none()
            .then(|| intake::verify::parse_verify(event))
            .flatten();
        match (revert, verify) {
            (Some(revert), _) => self.intake_revert(revert, invocation),
            (None, Some(verify)) => self.intake_verify(verify, invocation),
            (None, None) => self.intake(event, invocation),
        }
    }

    async fn act_and_report(&self, intake: Intake<R>, invocation: &Invocation) -> InvocationReport {
        let Intake { mut settled, work } = intake;
        settled.append(&mut self.act_on_targets(work, invocation).await);
        InvocationReport::new(
            self.remediation.name(),
            &invocation.trace_id,
            &invocation.request_id,
            self.config.dry_run,
            merge::merge_by_alert(settled),
        )
    }

    /// How reports name an object: with its cluster when several are served.
    fn describe_target(&self, locator: &Locator, namespace: &str, name: &str) -> String {
        let object = describe(&locator.resource, namespace, name);
        match &locator.cluster {
            Some(cluster) if self.config.clusters.several() => format!("{cluster}: {object}"),
            _ => object,
        }
    }

    /// The time budget of `invocation`.
    fn timebox(&self, invocation: &Invocation) -> TimeBox {
        TimeBox::new(invocation.deadline, self.config.sinks.timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_id_comes_from_the_xray_root() {
        let inv = Invocation::new(
            "req-1",
            Some("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"),
            None,
        );
        assert_eq!(inv.trace_id, "1-5759e988-bd862e3fe1be46a994272793");
        assert_eq!(Invocation::new("req-1", None, None).trace_id, "req-1");
        assert_eq!(
            Invocation::new("req-1", Some("garbage"), None).trace_id,
            "req-1"
        );
    }
}
