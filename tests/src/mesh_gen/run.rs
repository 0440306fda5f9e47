//! Breaker meshes on a real API server, through the shared harness ([`crate::generated`]):
//! what is stored of them (Services, ServiceEntries, DestinationRules) and what is compiled.

use serde_json::Value;

use super::GeneratedMesh;
use crate::generated::Generated;
use crate::istio_oracle::CompileJob;

impl Generated for GeneratedMesh {
    const STORED: &'static [&'static str] = &["Service", "ServiceEntry", "DestinationRule"];

    crate::templated_mesh!();

    fn compile_job(&self, stored: &[Value]) -> CompileJob {
        (
            self.world_with(stored),
            self.client_proxies(),
            self.root_namespace(),
        )
    }
}
