//! What flows between the stages: a [`Work`] item per request and target locator (intake's
//! output), and the [`Subject`] one object of it is worked on as (the per-object stages'
//! input).

use std::sync::Arc;

use tokio::sync::OnceCell;

use super::Invocation;
use super::slots::Turn;
use crate::guard::decide;
use crate::intake::{AlertInput, RevertRequest};
use crate::remediation::{Locator, Remediation};
use crate::report::Source;

/// A request that passed intake and screening and awaits its target.
pub(super) struct Work<R: Remediation> {
    pub(super) order: usize,
    pub(super) source: Source,
    pub(super) locator: Locator,
    pub(super) request: Request,
    /// What is observed outside the clusters, once per alert for all its clusters.
    pub(super) observed: Arc<OnceCell<crate::Result<R::Observed>>>,
    /// Facts gathered once per alert and cluster, shared by its targets there.
    pub(super) facts: Arc<OnceCell<crate::Result<R::Facts>>>,
    /// One of several clusters a request was sent to (a revert for `all`): an object
    /// that is not in this cluster is no failure.
    pub(super) fanned_out: bool,
}

/// What a piece of work asks for.
pub(super) enum Request {
    /// An alert: firing (act) or resolved (record recovery, maybe restore).
    Alert { input: AlertInput, resolved: bool },
    /// Undo the recorded action on one object.
    Revert(RevertRequest),
    /// Judge whether the recorded action helped.
    Verify(super::verify::Verify),
}

/// One object a piece of work reaches, in one invocation: what decide, enact and audit are
/// given about it.
pub(super) struct Subject<'a, R: Remediation> {
    /// The request and where it came from.
    pub(super) work: &'a Work<R>,
    /// The object's namespace.
    pub(super) namespace: &'a str,
    /// The object's name.
    pub(super) name: &'a str,
    /// How reports name it, e.g. `Deployment shop/checkout-v2` (with its cluster when
    /// several are served).
    pub(super) target: String,
    /// The invocation it is worked on in.
    pub(super) invocation: &'a Invocation,
    /// Its target's turn to run, given up while it waits for a budget slot.
    pub(super) turn: &'a Turn,
}

impl<R: Remediation> Subject<'_, R> {
    /// The alert's name, for spans.
    pub(super) fn alert(&self) -> Option<&str> {
        self.work.source.alert.as_deref()
    }
}

impl<R: Remediation> Work<R> {
    pub(super) fn resolved(&self) -> bool {
        matches!(self.request, Request::Alert { resolved: true, .. })
    }

    pub(super) fn fingerprint(&self) -> &str {
        match &self.request {
            Request::Alert { input, .. } => &input.alert.fingerprint,
            Request::Revert(_) => "revert-request",
            Request::Verify(_) => "verify-request",
        }
    }

    /// Why this runs as a server-side dry run; `None` when it makes changes.
    pub(super) fn dry_run(&self, config_dry_run: bool) -> Option<&'static str> {
        match &self.request {
            Request::Alert { input, .. } => decide::is_dry_run(config_dry_run, input)
                .then(|| dry_run_reason(config_dry_run, input)),
            Request::Revert(_) if config_dry_run => {
                Some("DRY_RUN=true: validated by server-side dry run, nothing stored")
            }
            Request::Revert(request) if request.dry_run => Some(
                "dryRun in the revert request: validated by server-side dry run, nothing stored",
            ),
            Request::Revert(_) => None,
            Request::Verify(_) if config_dry_run => {
                Some("DRY_RUN=true: validated by server-side dry run, nothing stored")
            }
            Request::Verify(_) => None,
        }
    }

    /// Where the change comes from, for the Kubernetes Event.
    pub(super) fn origin(&self) -> String {
        use crate::intake::names::printable;
        match &self.request {
            Request::Alert { input, .. } => format!(
                "alert {} fingerprint {}",
                printable(input.alert.name()),
                printable(&input.alert.fingerprint)
            ),
            Request::Revert(request) => format!(
                "revert request{}: {}",
                request
                    .requested_by
                    .as_deref()
                    .map(|by| format!(" by {}", printable(by)))
                    .unwrap_or_default(),
                printable(&request.reason)
            ),
            Request::Verify(verify) => format!(
                "verification of the action of trace {}",
                printable(&verify.request.trace_id)
            ),
        }
    }
}

fn dry_run_reason(config_dry_run: bool, input: &AlertInput) -> &'static str {
    if input.drill {
        "drill: validated by server-side dry run, nothing stored"
    } else if config_dry_run {
        "DRY_RUN=true: validated by server-side dry run, nothing stored"
    } else {
        "dry_run label: validated by server-side dry run, nothing stored"
    }
}
