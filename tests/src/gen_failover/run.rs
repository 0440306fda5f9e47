//! Failover meshes on a real API server, through the shared harness
//! ([`crate::generated`]): what is stored of them (DestinationRules, VirtualServices, and
//! frontend's Services and ready Pods, which region-failover reads), what is compiled, and
//! the regions' health endpoints.

use std::ops::Deref;
use std::path::PathBuf;

use serde_json::Value;

use super::FailoverMesh;
use crate::generated::{self, Generated};
use crate::istio_oracle::CompileJob;
use crate::mesh::HealthEndpoint;

/// The shared harness, and the regions' health endpoints.
pub struct Harness {
    base: generated::Harness,
    ok: HealthEndpoint,
    failing: HealthEndpoint,
}

impl Deref for Harness {
    type Target = generated::Harness;

    fn deref(&self) -> &generated::Harness {
        &self.base
    }
}

impl Harness {
    /// Connects with the admin kubeconfig (function kubeconfigs beside it) and starts two
    /// health endpoints, one answering 200 and one 503.
    pub async fn connect(kubeconfig: PathBuf) -> Harness {
        Harness {
            base: generated::Harness::connect(kubeconfig, "genfo-home").await,
            ok: HealthEndpoint::start(200).await,
            failing: HealthEndpoint::start(503).await,
        }
    }

    /// `REGION_HEALTH_URLS` for `mesh`, if it configures one.
    pub fn health_urls(&self, mesh: &FailoverMesh) -> Option<String> {
        mesh.health_urls(self.ok.url(), self.failing.url())
    }
}

impl Generated for FailoverMesh {
    const STORED: &'static [&'static str] = &["DestinationRule", "VirtualService"];

    crate::templated_mesh!();

    fn also_stored(&self) -> Vec<Value> {
        self.world_objects()
            .into_iter()
            .filter(|o| o["kind"] == "Service" || o["kind"] == "Pod")
            .collect()
    }

    fn compile_job(&self, stored: &[Value]) -> CompileJob {
        (
            self.world_with(stored),
            self.client_proxies(),
            self.root_namespace(),
        )
    }
}
