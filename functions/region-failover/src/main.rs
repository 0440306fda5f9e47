//! `region-failover`: shift a service's traffic away from a degraded region (weights or locality failover).

use mesh_remediation::remediation::RegionFailover;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), mesh_remediation::BoxError> {
    mesh_remediation::run_with(RegionFailover::from_env).await
}
