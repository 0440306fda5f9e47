//! Breaker meshes on a real API server, through the shared harness ([`crate::generated`]):
//! what is stored of them (Services, ServiceEntries, DestinationRules) and what is compiled.

use serde_json::Value;

use super::GeneratedMesh;
use crate::generated::Generated;
use crate::istio_oracle::CompileJob;

impl Generated for GeneratedMesh {
    const STORED: &'static [&'static str] = &["Service", "ServiceEntry", "DestinationRule"];

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

    fn compile_job(&self, stored: &[Value]) -> CompileJob {
        (
            self.world_with(stored),
            self.client_proxies(),
            self.root_namespace(),
        )
    }
}
