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

    fn seed(&self) -> u64 {
        self.seed
    }

    fn renamed(&self, prefix: &str) -> Self {
        self.with_prefix(prefix)
    }

    fn smaller(&self) -> Vec<Self> {
        self.shrink()
    }

    fn weight(&self) -> usize {
        self.size()
    }

    fn namespaces(&self) -> Vec<String> {
        self.namespace_names()
    }

    fn alert_namespace(&self) -> String {
        self.alert_ns()
    }

    fn objects(&self) -> Vec<Value> {
        self.api_objects()
    }

    fn prefix(&self) -> String {
        self.prefix.clone()
    }

    fn to_yaml(&self) -> String {
        Self::to_yaml(self)
    }

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
