//! Where a service's endpoints run, on the real API server: one Node per region (named and
//! labelled as the oracle's world names them) and ready Pods on them. region-failover reads
//! them (a drain must not leave a routed subset without endpoints); the oracle reads its own
//! copies.

use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::istio_oracle::REGIONS;
use crate::transient::{create, idempotent};

/// Creates `node-<region>` for every region of [`REGIONS`] (labelled with its region and
/// zone), if not there yet. KWOK manages them.
pub async fn region_nodes(client: &kube::Client) {
    let api = Api::<Node>::all(client.clone());
    for region in REGIONS {
        let node: Node = serde_json::from_value(json!({"metadata": {
            "name": format!("node-{region}"),
            "annotations": {"kwok.x-k8s.io/node": "fake"},
            "labels": {"type": "kwok", "topology.kubernetes.io/region": region,
                       "topology.kubernetes.io/zone": format!("{region}a")}}}))
        .expect("node");
        match api.create(&PostParams::default(), &node).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(err) => panic!("create node-{region}: {err}"),
        }
    }
}

/// Stores a Pod of the oracle's world (`spec.nodeName` set, so no scheduling) and marks it
/// ready at once through its status, as a kubelet would.
pub async fn store_pod(client: &kube::Client, pod: &Value) -> Result<(), String> {
    let namespace = pod["metadata"]["namespace"].as_str().unwrap_or_default();
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let mut spec = pod.clone();
    if let Some(object) = spec.as_object_mut() {
        object.remove("status");
    }
    let created: Pod = serde_json::from_value(spec).map_err(|err| format!("pod {name}: {err}"))?;
    let api = Api::<Pod>::namespaced(client.clone(), namespace);
    // A new namespace's `default` ServiceAccount is made by the controller manager shortly
    // after it: Pods are refused until it exists, so wait for it.
    default_service_account(client, namespace).await?;
    let post = PostParams::default();
    create(&format!("pod {namespace}/{name}"), || {
        api.create(&post, &created)
    })
    .await?;
    let status = json!({"status": {"phase": "Running",
        "conditions": [{"type": "Ready", "status": "True"}]}});
    let params = PatchParams::default();
    let ready = Patch::Merge(&status);
    idempotent(&format!("mark pod {namespace}/{name} ready"), || {
        api.patch_status(name, &params, &ready)
    })
    .await;
    Ok(())
}

/// Waits (up to a minute) until `namespace` has its `default` ServiceAccount.
async fn default_service_account(client: &kube::Client, namespace: &str) -> Result<(), String> {
    let api = Api::<ServiceAccount>::namespaced(client.clone(), namespace);
    let started = std::time::Instant::now();
    loop {
        match api.get_opt("default").await {
            Ok(Some(_)) => return Ok(()),
            Ok(None) | Err(_) if started.elapsed() < std::time::Duration::from_secs(60) => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Ok(None) => {
                return Err(format!(
                    "namespace {namespace} has no default ServiceAccount after 60 s"
                ));
            }
            Err(err) => return Err(format!("get ServiceAccount {namespace}/default: {err}")),
        }
    }
}
