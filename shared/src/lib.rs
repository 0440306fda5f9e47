//! Serverless auto-remediation for an Istio service mesh on EKS.
//!
//! Every function runs the same pipeline, one stage per module:
//!
//! ```text
//! SNS event -> intake (parse, validate) -> decide (pure) -> enact (patch + record, dry run, Event)
//!           -> report (one outcome per alert: response, log line, notification)
//! ```
//!
//! A remediation is one module behind [`remediation::Remediation`]; a function's `main` is
//! a call to [`run`].

pub mod alert;
mod backoff;
pub mod budget;
pub mod clusters;
pub mod config;
pub mod connect;
pub mod controllers;
pub mod decide;
pub mod eks;
pub mod error;
pub mod escalation;
pub mod intake;
pub mod lambda;
pub mod names;
pub mod notify;
pub mod pause;
pub mod pipeline;
pub mod record;
pub mod remediation;
pub mod report;
pub mod skip;
pub mod telemetry;

pub use error::{Error, Result};

// glibc's malloc spent about a sixth of a warm invocation's CPU consolidating and
// unlinking chunks; every binary built on this crate allocates with mimalloc instead.
// Built without transparent huge pages (`no_thp`): with them, the first touch of an arena
// made 2 MiB resident and peak RSS nearly doubled.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
pub use lambda::{BoxError, run, run_with};
