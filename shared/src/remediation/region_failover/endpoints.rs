//! The regions a service's endpoints run in, per subset: what a drain by locality leaves
//! each subset. Istio takes an endpoint's labels from its pod and its locality from the
//! pod's node (`topology.kubernetes.io/region`), and routes only to ready endpoints.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::Result;
use crate::remediation::pods;
use crate::remediation::resolution::hosts::Labels;

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
        let carries = |pod: &ReadyPod, labels: &Labels| pods::carries(&pod.labels, labels);
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
    let Some((_, pods)) = pods::ready_pods(client, host).await? else {
        return Ok(None);
    };
    if pods.is_empty() {
        return Ok(None);
    }
    let regions = pods::node_regions(client).await?;
    let ready: Vec<ReadyPod> = pods
        .into_iter()
        .filter_map(|pod| {
            Some(ReadyPod {
                region: regions.get(&pod.node)?.clone(),
                labels: pod.labels,
            })
        })
        .collect();
    if ready.is_empty() {
        return Ok(None);
    }
    Ok(Some(Endpoints::of(&ready, subsets)))
}
