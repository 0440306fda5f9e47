//! Istio's resolution, as its config compiler applies it: the one model every mesh
//! remediation plans against.
//!
//! - [`hosts`]: which VirtualServices and DestinationRules name a host for the sidecars
//!   (short names, wildcards, gateway binding, `exportTo`), what a route destination names,
//!   and the levels a traffic policy is read at;
//! - [`rules`] (re-exported here): which DestinationRules each class of client takes, and
//!   what they merge into (lookup path, root namespace, `workloadSelector`, precedence);
//! - [`placement`]: where a traffic-policy change must be written so that every client
//!   takes it, and what stops it from being in force for all.
//!
//! What a route reaches is judged with it by each remediation: the versions a destination
//! carries (`error_rollback::reach`), and the regions a request can go to
//! (`region_failover::paths`), both from the subsets these rules resolve and the ready pods
//! ([`super::pods`]).

pub mod hosts;
pub mod placement;
pub mod rules;

pub use rules::{Client, Merged, Resolver};
