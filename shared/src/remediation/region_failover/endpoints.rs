//! The regions a service's endpoints run in, per subset: what a drain by locality leaves
//! each subset. Istio takes an endpoint's labels from its pod and its locality from the
//! pod's node (`topology.kubernetes.io/region`), and routes only to ready endpoints.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::Api;
use kube::api::ListParams;

use super::REGION_LABEL;
use crate::error::{Error, Result};
use crate::remediation::hosts::Labels;
use crate::remediation::resolution::Resolver;

/// The node labels that may hold a node's region, newest first.
const NODE_REGION_LABELS: [&str; 2] = [REGION_LABEL, "failure-domain.beta.kubernetes.io/region"];

/// Where a service's ready endpoints run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Endpoints {
    /// The regions of every ready endpoint of the Service.
    pub service: BTreeSet<String>,
    /// The regions of each subset's ready endpoints (the Service's pods that carry the
    /// subset's labels), by subset name.
    pub subsets: BTreeMap<String, BTreeSet<String>>,
}

/// One ready pod: its labels and its node's region.
pub struct ReadyPod {
    /// The pod's labels.
    pub labels: Labels,
    /// Its node's region.
    pub region: String,
}

impl Endpoints {
    /// From the service's ready pods and the subsets' labels; pure.
    pub fn of(pods: &[ReadyPod], subsets: &BTreeMap<String, Labels>) -> Endpoints {
        let carries = |pod: &ReadyPod, labels: &Labels| {
            labels.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
        };
        Endpoints {
            service: pods.iter().map(|p| p.region.clone()).collect(),
            subsets: subsets
                .iter()
                .map(|(name, labels)| {
                    let regions = pods
                        .iter()
                        .filter(|p| carries(p, labels))
                        .map(|p| p.region.clone())
                        .collect();
                    (name.clone(), regions)
                })
                .collect(),
        }
    }

    /// The regions of a destination's endpoints: its subset's, or the Service's.
    pub fn regions(&self, subset: Option<&str>) -> Option<&BTreeSet<String>> {
        match subset {
            Some(name) => self.subsets.get(name),
            None => Some(&self.service),
        }
    }
}

/// Reads where `host`'s endpoints run: `None` when the host is not a Service of this
/// cluster with a selector (a ServiceEntry, an external name), or none of its pods is ready
/// on a node with a region.
pub async fn read(
    client: &kube::Client,
    host: &str,
    subsets: &BTreeMap<String, Labels>,
) -> Result<Option<Endpoints>> {
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
    let selector = selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let (pods, nodes) = futures::try_join!(
        async {
            Api::<Pod>::namespaced(client.clone(), namespace)
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|err| {
                    Error::kube(
                        format!(
                            "list the Pods of Service {namespace}/{name} (where its endpoints run)"
                        ),
                        err,
                    )
                })
        },
        async {
            Api::<Node>::all(client.clone())
                .list_metadata(&ListParams::default())
                .await
                .map_err(|err| Error::kube("list Nodes (their regions)", err))
        },
    )?;
    let regions: BTreeMap<String, String> = nodes
        .items
        .into_iter()
        .filter_map(|node| {
            let labels = node.metadata.labels?;
            let region = NODE_REGION_LABELS
                .iter()
                .find_map(|key| labels.get(*key).cloned())?;
            Some((node.metadata.name?, region))
        })
        .collect();
    let ready: Vec<ReadyPod> = pods
        .items
        .into_iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none() && is_ready(pod))
        .filter_map(|pod| {
            let node = pod.spec.as_ref()?.node_name.as_ref()?;
            let region = regions.get(node)?.clone();
            Some(ReadyPod {
                labels: pod
                    .metadata
                    .labels
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
                region,
            })
        })
        .collect();
    if ready.is_empty() {
        return Ok(None);
    }
    Ok(Some(Endpoints::of(&ready, subsets)))
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
