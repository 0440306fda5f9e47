//! `kubectl-mesh_remediation`: kubectl runs it as `kubectl mesh-remediation`.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    kubectl_mesh_remediation::main_with(std::env::args_os()).await
}
