//! Serverless auto-remediation for an Istio service mesh on EKS.
//!
//! Every function runs the same pipeline; the tree follows it:
//!
//! ```text
//! SNS event -> intake (parse, validate) -> guard (decide, pure; budgets, pauses, escalation)
//!           -> pipeline (plan with remediation, enact on cluster: patch + record, Event)
//!           -> report (one outcome per alert: response, log line, notification)
//! ```
//!
//! - [`intake`]: Lambda event to alert groups, and the label checks for API paths;
//! - [`guard`]: whether to act, and the brakes that hold across invocations;
//! - [`remediation`]: the four changes, and Istio's resolution they plan against;
//! - [`pipeline`]: the stages of one invocation, and the write loop;
//! - [`cluster`]: connections to the served clusters, the action record, other controllers;
//! - [`report`]: outcomes, notifications and logs;
//! - [`config`], [`error`], [`lambda`]: settings, the one error type, the Lambda edge;
//! - [`drill`]: the chaos-drill alert, built and published as Alertmanager would;
//! - [`verify`]: whether an applied change helped, judged on Prometheus after a delay.
//!
//! A remediation is one module behind [`remediation::Remediation`]; a function's `main` is
//! a call to [`run`].

mod aws;
mod backoff;
pub mod cluster;
pub mod config;
pub mod drill;
pub mod error;
pub mod guard;
pub mod intake;
pub mod lambda;
pub mod pipeline;
pub mod remediation;
pub mod report;
mod variables;
pub mod verify;

pub use error::{Error, Result};

// glibc's malloc spent about a sixth of a warm invocation's CPU consolidating and
// unlinking chunks; every binary built on this crate allocates with mimalloc instead.
// Built without transparent huge pages (`no_thp`): with them, the first touch of an arena
// made 2 MiB resident and peak RSS nearly doubled.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
pub use lambda::{BoxError, run, run_with};
