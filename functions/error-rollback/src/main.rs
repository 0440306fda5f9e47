//! `error-rollback`: route 100 % of a service's traffic to its stable version (VirtualService weights).

use mesh_remediation::remediation::ErrorRollback;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), mesh_remediation::BoxError> {
    mesh_remediation::run(ErrorRollback).await
}
