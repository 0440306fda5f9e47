//! `latency-restart`: rollout restart of the Deployment named by a P95 latency alert.

use mesh_remediation::remediation::LatencyRestart;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), mesh_remediation::BoxError> {
    mesh_remediation::run(LatencyRestart).await
}
