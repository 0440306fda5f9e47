//! Where a Service's traffic can land: its ready Pods (Istio routes only to ready
//! endpoints, and takes an endpoint's labels from its pod) and the regions of their Nodes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::Api;
use kube::api::ListParams;

use super::resolution::Resolver;
use super::resolution::hosts::Labels;
use crate::error::{Error, Result};

/// The node labels that may hold a node's region, newest first.
const NODE_REGION_LABELS: [&str; 2] = [
    "topology.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/region",
];

/// One ready pod of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyPod {
    /// The pod's labels.
    pub labels: Labels,
    /// The node it runs on.
    pub node: String,
}

/// Whether a pod carries every one of `labels`.
pub fn carries(pod: &Labels, labels: &Labels) -> bool {
    labels.iter().all(|(k, v)| pod.get(k) == Some(v))
}

/// The selector of the Service behind `host` and its ready pods: `None` when the host is no
/// Service of this cluster with a selector (a ServiceEntry, an external name).
pub async fn ready_pods(
    client: &kube::Client,
    host: &str,
) -> Result<Option<(Labels, Vec<ReadyPod>)>> {
    let Some(namespace) = Resolver::service_namespace_of(host) else {
        return Ok(None);
    };
    let name = host.split('.').next().unwrap_or_default();
    let service = Api::<Service>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(|err| Error::kube(format!("get Service {namespace}/{name}"), err))?;
    let Some(selector) = service
        .and_then(|s| s.spec)
        .and_then(|s| s.selector)
        .filter(|s| !s.is_empty())
    else {
        return Ok(None);
    };
    let query = selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(&query))
        .await
        .map_err(|err| {
            Error::kube(
                format!("list the Pods of Service {namespace}/{name} (where its traffic lands)"),
                err,
            )
        })?;
    let ready = pods
        .items
        .into_iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none() && is_ready(pod))
        .filter_map(|pod| {
            let node = pod.spec.as_ref()?.node_name.clone()?;
            Some(ReadyPod {
                labels: pod
                    .metadata
                    .labels
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
                node,
            })
        })
        .collect();
    Ok(Some((selector.into_iter().collect(), ready)))
}

/// Each node's region, for the nodes that carry one.
pub async fn node_regions(client: &kube::Client) -> Result<BTreeMap<String, String>> {
    let nodes = Api::<Node>::all(client.clone())
        .list_metadata(&ListParams::default())
        .await
        .map_err(|err| Error::kube("list Nodes (their regions)", err))?;
    Ok(nodes
        .items
        .into_iter()
        .filter_map(|node| {
            let labels = node.metadata.labels?;
            let region = NODE_REGION_LABELS
                .iter()
                .find_map(|key| labels.get(*key).cloned())?;
            Some((node.metadata.name?, region))
        })
        .collect())
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}
