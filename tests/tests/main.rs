//! The integration tests, one module per area, in one test binary (one link of kube, the
//! AWS SDK and the test kit instead of one per file). Every test runs on the real control
//! plane `scripts/test` starts (`TEST_KUBECONFIG`); pick an area with nextest's filter,
//! e.g. `cargo nextest run -p remediation-testkit -E 'test(/^reliability::/)'`.

mod budgets;
mod db_circuit_break;
mod deadline;
mod error_rollback;
mod escalation;
mod generated_breaker;
mod generated_failover;
mod generated_rollback;
mod hostile_input;
mod istio_verdict;
mod istio_verdict_breaker;
mod istio_verdict_failover;
mod istio_verdict_rollback;
mod lambda_emulator;
mod lambda_emulator_mesh;
mod latency_restart;
mod least_privilege;
mod local_invoke;
mod multi_cluster;
mod observability;
mod operator;
mod operator_actions;
mod pause;
mod races;
mod region_failover;
mod reliability;
mod request_counts;
mod secrets;
mod verification;
