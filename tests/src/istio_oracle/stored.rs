//! What the API server stores, for the oracle: the objects the functions saw and wrote,
//! read back into a [`World`], and the Services and namespaces tests store beside them.

use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};

use super::{Compiled, World, clients};
use crate::TestCluster;
use crate::mesh::{Kind, Mesh};

impl World {
    /// This world plus every Service, ServiceEntry, VirtualService and DestinationRule the
    /// API server stores in the test namespace: what the functions saw and wrote.
    pub async fn with_stored(&self, cluster: &TestCluster) -> World {
        let mut world = self.clone();
        for service in stored_services(cluster).await {
            world.add(service);
        }
        let mesh = Mesh::new(cluster);
        for kind in [
            Kind::ServiceEntry,
            Kind::DestinationRule,
            Kind::VirtualService,
        ] {
            let list = mesh
                .api(kind)
                .list(&ListParams::default())
                .await
                .expect("list");
            for object in list.items {
                world.add(serde_json::to_value(object).expect("json"));
            }
        }
        world
    }

    /// [`World::with_stored`] compiled for the [`clients`] of the test namespace.
    pub async fn compile_stored(&self, cluster: &TestCluster) -> Compiled {
        let world = self.with_stored(cluster).await;
        world.compile(&clients(&cluster.namespace))
    }
}

/// The Services of the test namespace as the API server stores them, as the oracle takes
/// them (with their `apiVersion` and `kind`).
pub async fn stored_services(cluster: &TestCluster) -> Vec<Value> {
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let list = services
        .list(&ListParams::default())
        .await
        .expect("list services");
    list.items
        .into_iter()
        .map(|service| {
            let mut value = serde_json::to_value(service).expect("json");
            value["apiVersion"] = json!("v1");
            value["kind"] = json!("Service");
            value
        })
        .collect()
}

/// Stores a ClusterIP Service `name` selecting `selector` on one HTTP port in the test
/// namespace, for the functions to read and the oracle to compile.
pub async fn store_service(cluster: &TestCluster, name: &str, selector: Value, port: u16) {
    let service: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": cluster.namespace},
        "spec": {"selector": selector, "ports": [{"name": "http", "port": port}]}}))
    .expect("service");
    Api::<Service>::namespaced(cluster.client.clone(), &cluster.namespace)
        .create(&PostParams::default(), &service)
        .await
        .unwrap_or_else(|err| panic!("create Service {name}: {err}"));
}

/// A namespace of clients beside the test's (`<test namespace>-<suffix>`), created on the
/// API server; its name.
pub async fn client_namespace(cluster: &TestCluster, suffix: &str) -> String {
    let name = format!("{}-{suffix}", cluster.namespace);
    let namespace: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name}})).expect("namespace");
    Api::<Namespace>::all(cluster.client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .expect("create namespace");
    name
}
