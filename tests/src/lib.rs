//! Test harness for the remediation functions.
//!
//! By default every test gets the in-process Kubernetes API stand-in (`kube-standin`).
//! With `TEST_KUBECONFIG` set, the same tests run against that real cluster instead, each
//! in a namespace of its own; checks that need the stand-in's request log or fault
//! injection are then skipped with a printed note, everything else runs unchanged.

pub mod cluster;
pub mod endpoints;
pub mod events;
pub mod fault_proxy;
pub mod fleet;
pub mod gen_failover;
pub mod gen_rollback;
pub mod generated;
pub mod http_capture;
pub mod istio_oracle;
pub mod lambda_emulator;
pub mod mesh;
pub mod mesh_gen;
pub mod moto;
pub mod transient;

pub use cluster::TestCluster;
