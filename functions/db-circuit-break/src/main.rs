//! `db-circuit-break`: enable circuit breaking on a service's DestinationRule (outlierDetection + connectionPool).

use mesh_remediation::remediation::DbCircuitBreak;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), mesh_remediation::BoxError> {
    mesh_remediation::run_with(DbCircuitBreak::from_env).await
}
