//! Which regions may take traffic: the health checks of `REGION_HEALTH_URLS`, done once per
//! alert before planning.

use std::collections::BTreeMap;

use super::RegionFailover;
use crate::error::{Error, Result};

/// Each region's health check result: `Ok` or why not.
pub type Health = BTreeMap<String, std::result::Result<(), String>>;

/// What [`RegionFailover`] learns before planning.
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
    pub paths: super::paths::Paths,
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

impl RegionFailover {
    /// The health-check client, built on first use (nothing at start-up).
    fn http(&self) -> Result<&reqwest::Client> {
        if let Some(client) = self.http.get() {
            return Ok(client);
        }
        let client = reqwest::Client::builder()
            .timeout(self.settings.health_timeout)
            .connect_timeout(self.settings.health_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|err| Error::Connect(format!("health-check HTTP client: {err}")))?;
        Ok(self.http.get_or_init(|| client))
    }

    /// Checks every configured region but the degraded one, concurrently.
    pub(super) async fn check_health(&self, degraded: &str) -> Result<Health> {
        let checks: Vec<_> = self
            .settings
            .health_urls
            .iter()
            .filter(|(region, _)| region != degraded)
            .collect();
        if checks.is_empty() {
            return Ok(BTreeMap::new());
        }
        let http = self.http()?;
        let timeout = self.settings.health_timeout;
        let results =
            futures::future::join_all(checks.into_iter().map(|(region, url)| async move {
                let result = match http.get(url).send().await {
                    Ok(response) if response.status().is_success() => Ok(()),
                    Ok(response) => Err(format!("HTTP {} from {url}", response.status().as_u16())),
                    Err(err) if err.is_timeout() => Err(format!(
                        "no answer from {url} within {}ms",
                        timeout.as_millis()
                    )),
                    Err(err) => Err(format!("{url} unreachable: {}", root_cause(&err))),
                };
                (region.clone(), result)
            }))
            .await;
        Ok(results.into_iter().collect())
    }
}

fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
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
