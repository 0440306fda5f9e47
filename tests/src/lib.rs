//! Test harness for the remediation functions.
//!
//! Every test runs on the real control plane named by `TEST_KUBECONFIG` (started by
//! `scripts/test-cluster`), each in a namespace of its own, behind the fault proxy
//! ([`fault_proxy`]) that injects faults and logs every request.

pub mod cluster;
pub mod crd_schema;
pub mod demo_mesh;
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
pub mod local_server;
pub mod mesh;
pub mod mesh_gen;
pub mod moto;
pub mod operator;
pub mod transient;
pub mod verify_world;

pub use cluster::TestCluster;
