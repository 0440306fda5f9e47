//! What [`RegionFailover`](super::RegionFailover) learns before planning, and the rules
//! read from it: which regions may take traffic, and which a drain keeps.

use std::collections::BTreeMap;

use super::health::Health;

/// What region-failover learns before planning.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RegionFacts {
    /// Whether health URLs are configured (if not, every other region counts as healthy).
    pub checked: bool,
    /// The result of each region's health check (done once for every cluster).
    pub health: Health,
    /// Subset name -> region, from the service's DestinationRule subsets.
    pub subset_regions: BTreeMap<String, String>,
    /// Regions known by name, in preference order (health URLs first, then subsets).
    pub known_regions: Vec<String>,
    /// Every request to the service names its region (a split the weights lever shifts, or a
    /// subset keyed on a region): the DestinationRule drain is not needed.
    pub split_by_virtual_service: bool,
    /// Where the service's requests go, route by route, and which lever moves them.
    pub paths: Paths,
    /// Regions whose subsets some clients reach no endpoint of (the `distribute` they take
    /// gives the region no share): weight is not moved there. Region -> why.
    pub stranded: BTreeMap<String, String>,
    /// Where the service's ready endpoints run, per subset, when it is a Service of the
    /// cluster with ready pods.
    pub endpoints: Option<super::endpoints::Endpoints>,
    /// Every DestinationRule in the cluster (which rule each client takes).
    pub rules: Vec<kube::api::DynamicObject>,
    /// The VirtualServices the alert changes: opted in, in its namespace, routing the service.
    pub virtual_services: Vec<kube::api::DynamicObject>,
    /// The namespaces the function may change objects in.
    pub changeable: crate::remediation::object::Namespaces,
    /// Istio's root namespace (`ISTIO_ROOT_NAMESPACE`).
    pub root: String,
}

impl RegionFacts {
    /// Whether `region` may receive traffic, or why not.
    pub fn healthy(&self, region: &str) -> std::result::Result<(), String> {
        if !self.checked {
            return Ok(());
        }
        match self.health.get(region) {
            Some(result) => result.clone(),
            None => Err("no health URL in REGION_HEALTH_URLS".into()),
        }
    }

    /// Why a drain of `degraded` by locality leaves `region` out (it sends only to the
    /// healthy regions it knows), or `Ok` when it keeps it.
    pub fn drain_keeps(&self, region: &str, degraded: &str) -> std::result::Result<(), String> {
        if region == degraded {
            return Err("the degraded region".into());
        }
        self.healthy(region)?;
        if !self.known_regions.iter().any(|r| r == region) {
            return Err("not a region the function knows".into());
        }
        Ok(())
    }

    /// Whether a region split may move weight to `region`, or why not: it is healthy and
    /// every client reaches its subset.
    pub fn receives(&self, region: &str) -> std::result::Result<(), String> {
        self.healthy(region)?;
        match self.stranded.get(region) {
            Some(why) => Err(why.clone()),
            None => Ok(()),
        }
    }

    /// The health of every region other than `degraded`, in words.
    pub fn health_report(&self, degraded: &str, regions: &[String]) -> String {
        let mut seen: Vec<&String> = Vec::new();
        for region in regions.iter().chain(&self.known_regions) {
            if region != degraded && !seen.contains(&region) {
                seen.push(region);
            }
        }
        if seen.is_empty() {
            return "no other region is known".into();
        }
        seen.iter()
            .map(|r| match self.healthy(r) {
                Ok(()) => format!("{r}: healthy"),
                Err(why) => format!("{r}: {why}"),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// What the routes of every VirtualService say about the service's requests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Paths {
    /// Requests that reach the service's endpoints in any region (its host with no subset,
    /// a subset not keyed on a locality, the Service's default route for sidecars no
    /// VirtualService takes): only the drain by locality moves them.
    pub unpinned: Vec<String>,
    /// Requests neither lever moves off the degraded region: a subset keyed on it (or on a
    /// cluster or network, which cannot be told) outside a split the weights lever shifts,
    /// another host in it routed by a VirtualService the function does not change.
    pub unmoved: Vec<String>,
    /// Requests to a subset keyed on another region the drain by locality leaves out (it
    /// failed its health check): the drain would leave them no endpoint.
    pub emptied: Vec<String>,
    /// The subsets of the service that routes send requests to (`None`: the Service
    /// itself, which every client without a subset reaches).
    pub routed: std::collections::BTreeSet<Option<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_regions_are_unhealthy_once_urls_are_configured() {
        let facts = RegionFacts {
            checked: true,
            health: BTreeMap::from([
                ("us-west-2".into(), Ok(())),
                ("eu-west-1".into(), Err("HTTP 503".into())),
            ]),
            ..RegionFacts::default()
        };
        assert!(facts.healthy("us-west-2").is_ok());
        assert!(facts.healthy("eu-west-1").is_err());
        assert!(
            facts
                .healthy("ap-south-1")
                .is_err_and(|w| w.contains("REGION_HEALTH_URLS"))
        );
        assert!(RegionFacts::default().healthy("anything").is_ok());
    }
}
