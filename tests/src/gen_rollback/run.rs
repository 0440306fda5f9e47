//! Rollback meshes on a real API server, through the shared harness
//! ([`crate::generated`]): what is stored of them (Services, DestinationRules,
//! VirtualServices, and checkout's ready Pods, which error-rollback reads) and what is
//! compiled.

use serde_json::Value;

use super::RollbackMesh;
use crate::generated::Generated;
use crate::istio_oracle::CompileJob;

impl Generated for RollbackMesh {
    const STORED: &'static [&'static str] = &["Service", "DestinationRule", "VirtualService"];

    crate::templated_mesh!();

    fn also_stored(&self) -> Vec<Value> {
        self.world_objects()
            .into_iter()
            .filter(|o| o["kind"] == "Pod")
            .collect()
    }

    fn compile_job(&self, stored: &[Value]) -> CompileJob {
        (
            self.world_with(stored),
            self.proxies(),
            self.root_namespace(),
        )
    }
}
