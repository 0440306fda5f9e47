//! `region-failover`: shift a service's traffic away from a degraded region.
//!
//! Two levers, on objects labelled `auto_remediation=active` in the alert's namespace:
//!
//! 1. **VirtualService weights** (preferred: explicit and immediate). In every HTTP route
//!    that splits the service per region, the degraded region's weight goes to 0 and is
//!    spread over the *healthy* remaining regions in proportion to their current weights
//!    (integers, the total kept, largest remainder, ties to the earlier destination).
//!    Regions that fail their health check keep their weight but receive nothing more.
//!    A destination's region is, in this order: the `topology.kubernetes.io/region` label
//!    of its DestinationRule subset; its subset name when that is a known or AWS-shaped
//!    region name; a region name inside its host (`frontend-us-east-1`, `frontend.eu-west-1.example.com`).
//! 2. **DestinationRule locality failover**, only when no opted-in VirtualService splits
//!    the service per region: `trafficPolicy.loadBalancer.localityLbSetting.failover`
//!    gets `{from: <degraded>, to: <first healthy region>}`, plus the `outlierDetection`
//!    Istio needs before failover does anything (added only when absent; it allows
//!    ejecting a whole locality, `maxEjectionPercent: 100`).
//!
//! Health: with `REGION_HEALTH_URLS` unset, every region but the degraded one counts as
//! healthy (the alert is the only signal). Once it is set, a region is healthy only if
//! its URL answers 2xx within `HEALTH_CHECK_TIMEOUT_MS`; a region without a URL is
//! unknown and gets no traffic. No healthy region left: nothing changes and the alert
//! fails with the health of each region as the reason.
//!
//! A resolved alert restores the previous weights / policy when `FAILBACK_ON_RESOLVE` is
//! on (default off: failing back into a region that just recovered is a human call);
//! a revert request does the same on demand.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use futures::future::BoxFuture;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use serde_json::{Value, json};

use super::hosts;
use super::istio::{self, OnEdit};
use super::{Locator, Plan, PlanContext, Refusal, Remediation};
use crate::config::{self, Config};
use crate::error::{Error, Result};
use crate::intake::AlertInput;
use crate::names;
use crate::record::{self, ActionRecord};

/// The node label holding a node's region, used on DestinationRule subsets.
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";

/// The `outlierDetection` added with a locality failover when the rule has none.
pub fn failover_outlier_detection() -> Value {
    json!({
        "consecutive5xxErrors": 5,
        "interval": "10s",
        "baseEjectionTime": "30s",
        "maxEjectionPercent": 100,
    })
}

/// Failover settings, from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverSettings {
    /// `REGION_HEALTH_URLS` (`region=url,region=url`), in preference order.
    pub health_urls: Vec<(String, String)>,
    /// `HEALTH_CHECK_TIMEOUT_MS` (default 2000).
    pub health_timeout: Duration,
    /// `FAILBACK_ON_RESOLVE`: a resolved alert restores the previous config (default false).
    pub failback_on_resolve: bool,
}

impl Default for FailoverSettings {
    fn default() -> Self {
        FailoverSettings {
            health_urls: Vec::new(),
            health_timeout: Duration::from_millis(2000),
            failback_on_resolve: false,
        }
    }
}

impl FailoverSettings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the settings through `lookup`; a bad value names its variable.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let get = config::trimmed(lookup);
        let defaults = FailoverSettings::default();
        let bad = |message: String| Error::Config {
            var: "REGION_HEALTH_URLS",
            message,
        };
        let mut health_urls: Vec<(String, String)> = Vec::new();
        for entry in get("REGION_HEALTH_URLS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let (region, url) = entry
                .split_once('=')
                .ok_or_else(|| bad(format!("\"{}\" is not region=url", names::printable(entry))))?;
            let (region, url) = (region.trim(), url.trim());
            names::label_value("region", region).map_err(bad)?;
            let parsed = reqwest::Url::parse(url).map_err(|err| {
                bad(format!(
                    "{region}: \"{}\" is not a URL: {err}",
                    names::printable(url)
                ))
            })?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(bad(format!("{region}: {url} is not an http(s) URL")));
            }
            if health_urls.iter().any(|(r, _)| r == region) {
                return Err(bad(format!("region {region} is listed twice")));
            }
            health_urls.push((region.to_owned(), url.to_owned()));
        }
        let timeout_ms = config::number(
            &get,
            "HEALTH_CHECK_TIMEOUT_MS",
            u64::try_from(defaults.health_timeout.as_millis()).unwrap_or(2000),
            1,
        )?;
        Ok(FailoverSettings {
            health_urls,
            health_timeout: Duration::from_millis(timeout_ms),
            failback_on_resolve: config::boolean(
                &get,
                "FAILBACK_ON_RESOLVE",
                defaults.failback_on_resolve,
            )?,
        })
    }
}

/// What [`RegionFailover`] learns before planning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegionFacts {
    /// Whether health URLs are configured (if not, every other region counts as healthy).
    pub checked: bool,
    /// The result of each region's health check: `Ok` or why not.
    pub health: BTreeMap<String, std::result::Result<(), String>>,
    /// Subset name -> region, from the service's DestinationRule subsets.
    pub subset_regions: BTreeMap<String, String>,
    /// Regions known by name, in preference order (health URLs first, then subsets).
    pub known_regions: Vec<String>,
    /// An opted-in VirtualService splits the service per region, degraded one included.
    pub split_by_virtual_service: bool,
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

/// Shifts traffic away from the alert's `region`.
#[derive(Debug, Clone, Default)]
pub struct RegionFailover {
    /// The settings in force.
    pub settings: FailoverSettings,
    http: OnceLock<reqwest::Client>,
}

impl RegionFailover {
    /// With settings from the process environment.
    pub fn from_env() -> Result<Self> {
        FailoverSettings::from_env().map(Self::new)
    }

    /// With these settings.
    pub fn new(settings: FailoverSettings) -> Self {
        RegionFailover {
            settings,
            http: OnceLock::new(),
        }
    }

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
    async fn check_health(
        &self,
        degraded: &str,
    ) -> Result<BTreeMap<String, std::result::Result<(), String>>> {
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

    /// Plans new weights for one VirtualService; pure.
    pub fn plan_weights(
        &self,
        object: &DynamicObject,
        degraded: &str,
        facts: &RegionFacts,
    ) -> std::result::Result<Plan, Refusal> {
        let http = istio::http_routes(object);
        let reweighed = istio::reweigh_routes(&http, |_, destinations| {
            let Some(regions) = route_regions(destinations, degraded, facts) else {
                return Ok(None);
            };
            let weights: Vec<i64> = destinations.iter().map(istio::weight).collect();
            shift_weights(&weights, &regions, degraded, |r| facts.healthy(r).is_ok())
                .map(Some)
                .ok_or_else(|| {
                    Refusal::Fail(format!(
                        "no healthy region to take {degraded}'s traffic ({}); nothing changed, humans must decide",
                        facts.health_report(degraded, &regions)
                    ))
                })
        })?;
        if reweighed.considered == 0 {
            return Err(Refusal::Skip(format!(
                "no HTTP route splits traffic per region including {degraded}"
            )));
        }
        if reweighed.changes.is_empty() {
            return Err(Refusal::Skip(format!(
                "already failed over: {degraded} has weight 0 in every region-split route"
            )));
        }
        let what = format!("shifted {degraded}'s traffic to healthy regions");
        Ok(istio::http_plan(object, reweighed, &what, "Failover"))
    }

    /// Plans a locality failover on one DestinationRule; pure.
    pub fn plan_locality_failover(
        &self,
        object: &DynamicObject,
        degraded: &str,
        facts: &RegionFacts,
    ) -> std::result::Result<Plan, Refusal> {
        if facts.split_by_virtual_service {
            return Err(Refusal::Skip(
                "traffic is shifted by VirtualService weights; locality failover not added".into(),
            ));
        }
        let previous = istio::fragment(object, ["trafficPolicy"]);
        let current = match &previous["trafficPolicy"] {
            Value::Null => json!({}),
            policy => policy.clone(),
        };
        let locality = current
            .pointer("/loadBalancer/localityLbSetting")
            .cloned()
            .unwrap_or_else(|| json!({}));
        if locality.get("enabled") == Some(&Value::Bool(false)) {
            return Err(Refusal::Fail(
                "locality load balancing is disabled on this rule (localityLbSetting.enabled: false); not enabling it automatically".into(),
            ));
        }
        for exclusive in ["distribute", "failoverPriority"] {
            if locality
                .get(exclusive)
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty())
            {
                return Err(Refusal::Fail(format!(
                    "localityLbSetting.{exclusive} is set, and only one of distribute, failover or failoverPriority may be; not adding a failover"
                )));
            }
        }
        let mut failover: Vec<Value> = locality
            .get("failover")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let existing = failover
            .iter()
            .position(|f| f.get("from").and_then(Value::as_str) == Some(degraded));
        let keep = existing
            .and_then(|i| failover[i].get("to").and_then(Value::as_str))
            .filter(|to| *to != degraded && facts.healthy(to).is_ok())
            .map(str::to_owned);
        let to = match keep {
            Some(to) => to,
            None => facts
                .known_regions
                .iter()
                .find(|r| *r != degraded && facts.healthy(r).is_ok())
                .cloned()
                .ok_or_else(|| {
                    Refusal::Fail(format!(
                        "no healthy region to fail {degraded} over to ({}); list the regions in REGION_HEALTH_URLS",
                        facts.health_report(degraded, &[])
                    ))
                })?,
        };
        let entry = json!({"from": degraded, "to": to});
        match existing {
            Some(i) => failover[i] = entry,
            None => failover.push(entry),
        }
        let mut patch = json!({"loadBalancer": {"localityLbSetting": {"failover": failover}}});
        let mut what = format!("locality failover from {degraded} to {to}");
        if current.get("outlierDetection").is_none() {
            patch["outlierDetection"] = failover_outlier_detection();
            what.push_str(" with the outlierDetection it needs (consecutive5xxErrors=5 interval=10s baseEjectionTime=30s maxEjectionPercent=100)");
        }
        let applied = istio::merged(&current, &patch);
        if applied == current {
            return Err(Refusal::Skip(format!(
                "already fails over from {degraded} to {to}"
            )));
        }
        Ok(Plan {
            patch: json!({"spec": {"trafficPolicy": patch}}),
            summary: what,
            action: "Failover",
            previous: Some(previous),
            applied: Some(json!({"trafficPolicy": applied})),
        })
    }
}

/// The region of each destination of a route, when the route splits per region and
/// the degraded region is among them; `None` otherwise.
pub fn route_regions(
    destinations: &[Value],
    degraded: &str,
    facts: &RegionFacts,
) -> Option<Vec<String>> {
    let regions: Vec<String> = destinations
        .iter()
        .map(|d| destination_region(d, degraded, facts))
        .collect::<Option<_>>()?;
    regions.iter().any(|r| r == degraded).then_some(regions)
}

/// The region a route destination sends traffic to, if it tells.
pub fn destination_region(
    destination: &Value,
    degraded: &str,
    facts: &RegionFacts,
) -> Option<String> {
    let known = |name: &str| name == degraded || facts.known_regions.iter().any(|r| r == name);
    if let Some(subset) = destination
        .pointer("/destination/subset")
        .and_then(Value::as_str)
    {
        if let Some(region) = facts.subset_regions.get(subset) {
            return Some(region.clone());
        }
        return (known(subset) || looks_like_region(subset)).then(|| subset.to_owned());
    }
    let host = destination
        .pointer("/destination/host")
        .and_then(Value::as_str)?;
    std::iter::once(degraded)
        .chain(facts.known_regions.iter().map(String::as_str))
        .find(|region| host_names_region(host, region))
        .map(str::to_owned)
        .or_else(|| region_in_host(host))
}

/// Whether `name` has the shape of an AWS region: `us-east-1`, `ap-southeast-2`,
/// `us-gov-west-1`.
pub fn looks_like_region(name: &str) -> bool {
    const DIRECTIONS: [&str; 9] = [
        "north",
        "south",
        "east",
        "west",
        "central",
        "northeast",
        "northwest",
        "southeast",
        "southwest",
    ];
    let parts: Vec<&str> = name.split('-').collect();
    let (first, direction, number) = match parts.as_slice() {
        [first, direction, number] => (*first, *direction, *number),
        [first, partition, direction, number]
            if *partition == "gov" || partition.starts_with("iso") =>
        {
            (*first, *direction, *number)
        }
        _ => return false,
    };
    first.len() == 2
        && first.bytes().all(|b| b.is_ascii_lowercase())
        && DIRECTIONS.contains(&direction)
        && !number.is_empty()
        && number.bytes().all(|b| b.is_ascii_digit())
}

/// Whether `region` appears in `host` as a whole `.`/`-` delimited run.
fn host_names_region(host: &str, region: &str) -> bool {
    host.match_indices(region).any(|(at, _)| {
        let before = host[..at].chars().last();
        let after = host[at + region.len()..].chars().next();
        before.is_none_or(|c| c == '.' || c == '-') && after.is_none_or(|c| c == '.' || c == '-')
    })
}

/// An AWS-shaped region name inside a host name, if any.
fn region_in_host(host: &str) -> Option<String> {
    host.split('.').find_map(|label| {
        let parts: Vec<&str> = label.split('-').collect();
        (0..parts.len()).find_map(|start| {
            [4, 3].iter().find_map(|len| {
                let candidate = parts.get(start..start + len)?.join("-");
                looks_like_region(&candidate).then_some(candidate)
            })
        })
    })
}

/// New weights after moving the degraded region's share to healthy regions in
/// proportion to their current weights. The total is kept; shares are rounded down and
/// the rest handed out by largest remainder (ties to the earlier destination). Healthy
/// regions that all have weight 0 share equally. Unhealthy regions keep their weight.
/// `None` when the degraded region carries traffic and no healthy region can take it.
pub fn shift_weights(
    weights: &[i64],
    regions: &[String],
    degraded: &str,
    healthy: impl Fn(&str) -> bool,
) -> Option<Vec<i64>> {
    let weights: Vec<i64> = weights.iter().map(|w| (*w).max(0)).collect();
    let moved: i64 = weights
        .iter()
        .zip(regions)
        .filter(|(_, r)| *r == degraded)
        .map(|(w, _)| w)
        .sum();
    if moved == 0 {
        return Some(weights);
    }
    let receivers: Vec<usize> = (0..weights.len())
        .filter(|i| regions[*i] != degraded && healthy(&regions[*i]))
        .collect();
    if receivers.is_empty() {
        return None;
    }
    let base: i64 = receivers.iter().map(|i| weights[*i]).sum();
    let (numerators, denominator): (Vec<i64>, i64) = if base > 0 {
        (
            receivers.iter().map(|i| moved * weights[*i]).collect(),
            base,
        )
    } else {
        (vec![moved; receivers.len()], receivers.len() as i64)
    };
    let mut new: Vec<i64> = weights
        .iter()
        .zip(regions)
        .map(|(w, r)| if r == degraded { 0 } else { *w })
        .collect();
    let mut handed = 0;
    for (slot, numerator) in receivers.iter().zip(&numerators) {
        let share = numerator / denominator;
        new[*slot] += share;
        handed += share;
    }
    let mut by_remainder: Vec<(usize, i64)> = receivers
        .iter()
        .zip(&numerators)
        .map(|(slot, numerator)| (*slot, numerator % denominator))
        .collect();
    by_remainder.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    for (slot, _) in by_remainder
        .iter()
        .take(usize::try_from(moved - handed).unwrap_or(0))
    {
        new[*slot] += 1;
    }
    Some(new)
}

fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

fn degraded_region(input: &AlertInput) -> &str {
    input.alert.label("region").unwrap_or_default()
}

fn is_destination_rule(object: &DynamicObject) -> bool {
    match &object.types {
        Some(types) => types.kind == "DestinationRule",
        None => istio::spec(object).is_some_and(|s| s.contains_key("host")),
    }
}

impl Remediation for RegionFailover {
    type Facts = RegionFacts;

    fn name(&self) -> &'static str {
        "region-failover"
    }

    fn locate(&self, input: &AlertInput, config: &Config) -> Result<Locator, String> {
        istio::service_label(input, self.name())?;
        let region = input
            .alert
            .label("region")
            .ok_or("alert has no `region` label (region-failover needs it)")?;
        names::label_value("region", region)?;
        Ok(istio::opted_in_objects(
            istio::virtual_service(config),
            input,
            "service",
        ))
    }

    fn targets(&self, input: &AlertInput, config: &Config) -> Result<Vec<Locator>, String> {
        let weights = self.locate(input, config)?;
        let rules = istio::opted_in_objects(istio::destination_rule(config), input, "service");
        Ok(vec![weights, rules])
    }

    fn selects(&self, input: &AlertInput, object: &DynamicObject) -> bool {
        let service = input.alert.label("service").unwrap_or_default();
        let host = hosts::alert_host(service, &input.namespace);
        hosts::routes_host(object, &host) || hosts::rule_host_is(object, &host)
    }

    fn prepare<'a>(
        &'a self,
        input: &'a AlertInput,
        client: &'a kube::Client,
        config: &'a Config,
    ) -> BoxFuture<'a, Result<RegionFacts>> {
        Box::pin(async move {
            let host = hosts::alert_host(
                input.alert.label("service").unwrap_or_default(),
                &input.namespace,
            );
            let degraded = degraded_region(input);
            let namespace = &input.namespace;
            let rules: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), namespace, &istio::destination_rule(config));
            let rules = rules
                .list(&ListParams::default())
                .await
                .map_err(|err| Error::kube(format!("list destinationrules in {namespace}"), err))?;
            let mut facts = RegionFacts {
                checked: !self.settings.health_urls.is_empty(),
                health: self.check_health(degraded).await?,
                known_regions: self
                    .settings
                    .health_urls
                    .iter()
                    .map(|(r, _)| r.clone())
                    .collect(),
                ..RegionFacts::default()
            };
            for rule in rules.items.iter().filter(|r| hosts::rule_host_is(r, &host)) {
                let subsets = istio::spec(rule)
                    .and_then(|s| s.get("subsets"))
                    .and_then(Value::as_array);
                for subset in subsets.into_iter().flatten() {
                    let (Some(name), Some(region)) = (
                        subset.get("name").and_then(Value::as_str),
                        subset
                            .pointer("/labels")
                            .and_then(|l| l.get(REGION_LABEL))
                            .and_then(Value::as_str),
                    ) else {
                        continue;
                    };
                    facts
                        .subset_regions
                        .insert(name.to_owned(), region.to_owned());
                    if !facts.known_regions.iter().any(|r| r == region) {
                        facts.known_regions.push(region.to_owned());
                    }
                }
            }
            let services: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), namespace, &istio::virtual_service(config));
            let selector = format!("{}={}", record::OPT_IN_LABEL, record::OPT_IN_VALUE);
            let services = services
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|err| Error::kube(format!("list virtualservices in {namespace}"), err))?;
            facts.split_by_virtual_service = services.items.iter().any(|vs| {
                hosts::routes_host(vs, &host)
                    && istio::http_routes(vs).iter().any(|route| {
                        route
                            .get("route")
                            .and_then(Value::as_array)
                            .is_some_and(|d| {
                                d.len() > 1 && route_regions(d, degraded, &facts).is_some()
                            })
                    })
            });
            Ok(facts)
        })
    }

    fn plan(
        &self,
        input: &AlertInput,
        object: &DynamicObject,
        context: PlanContext<'_, RegionFacts>,
    ) -> std::result::Result<Plan, Refusal> {
        let degraded = degraded_region(input);
        if is_destination_rule(object) {
            self.plan_locality_failover(object, degraded, context.facts)
        } else {
            self.plan_weights(object, degraded, context.facts)
        }
    }

    fn plan_resolved(
        &self,
        _input: &AlertInput,
        object: &DynamicObject,
        record: &ActionRecord,
        _context: PlanContext<'_>,
    ) -> Option<std::result::Result<Plan, Refusal>> {
        self.settings
            .failback_on_resolve
            .then(|| istio::plan_restore(object, record, self.name(), "Failback", OnEdit::Skip))
    }

    fn revertible(&self, config: &Config) -> Vec<ApiResource> {
        istio::revertible(config)
    }

    fn plan_revert(
        &self,
        object: &DynamicObject,
        record: &ActionRecord,
    ) -> std::result::Result<Plan, Refusal> {
        istio::plan_restore(object, record, self.name(), "Revert", OnEdit::Fail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn regions(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn all_healthy(_: &str) -> bool {
        true
    }

    #[test]
    fn the_degraded_share_goes_to_the_others_in_proportion() {
        let r = regions(&["us-east-1", "us-west-2", "eu-west-1"]);
        assert_eq!(
            shift_weights(&[60, 30, 10], &r, "us-east-1", all_healthy),
            Some(vec![0, 75, 25])
        );
        assert_eq!(
            shift_weights(&[60, 30, 10], &r, "eu-west-1", all_healthy),
            Some(vec![67, 33, 0])
        );
    }

    #[test]
    fn rounding_is_largest_remainder_and_deterministic() {
        let r = regions(&["a-east-1", "b-east-1", "c-east-1"]);
        // 20 moves: 7.5 and 12.5 -> 7 and 12, the spare point to the earlier tie.
        assert_eq!(
            shift_weights(&[20, 30, 50], &r, "a-east-1", all_healthy),
            Some(vec![0, 38, 62])
        );
        // 10 moves over 1:1:1 -> 3.33 each: 4, 3, 3 in destination order.
        let r4 = regions(&["d", "a", "b", "c"]);
        assert_eq!(
            shift_weights(&[10, 30, 30, 30], &r4, "d", all_healthy),
            Some(vec![0, 34, 33, 33])
        );
        // Larger remainders win over order: 7 * 5/9 = 3.89, 7 * 4/9 = 3.11.
        let r3 = regions(&["x", "y", "z"]);
        assert_eq!(
            shift_weights(&[7, 40, 50], &r3, "x", all_healthy),
            Some(vec![0, 43, 54])
        );
        for (weights, degraded) in [([33, 33, 34], "x"), ([1, 1, 98], "z"), ([97, 2, 1], "x")] {
            let out = shift_weights(&weights, &r3, degraded, all_healthy).expect("shift");
            assert_eq!(out.iter().sum::<i64>(), 100, "{weights:?} -> {out:?}");
        }
    }

    #[test]
    fn only_healthy_regions_receive_and_zero_weights_share_equally() {
        let r = regions(&["us-east-1", "us-west-2", "eu-west-1"]);
        assert_eq!(
            shift_weights(&[60, 30, 10], &r, "us-east-1", |r| r != "us-west-2"),
            Some(vec![0, 30, 70])
        );
        assert_eq!(
            shift_weights(&[100, 0, 0], &r, "us-east-1", all_healthy),
            Some(vec![0, 50, 50])
        );
        assert_eq!(
            shift_weights(&[60, 30, 10], &r, "us-east-1", |_| false),
            None
        );
        // Nothing to move: unchanged even with nobody healthy.
        assert_eq!(
            shift_weights(&[0, 70, 30], &r, "us-east-1", |_| false),
            Some(vec![0, 70, 30])
        );
    }

    #[test]
    fn regions_are_read_from_subsets_and_hosts() {
        let facts = RegionFacts {
            subset_regions: BTreeMap::from([("primary".into(), "eu-west-1".into())]),
            known_regions: vec!["moon-1".into()],
            ..RegionFacts::default()
        };
        let d = |v: Value| json!({"destination": v});
        let cases = [
            (
                d(json!({"host": "f", "subset": "primary"})),
                Some("eu-west-1"),
            ),
            (
                d(json!({"host": "f", "subset": "us-east-1"})),
                Some("us-east-1"),
            ),
            (d(json!({"host": "f", "subset": "moon-1"})), Some("moon-1")),
            (d(json!({"host": "f", "subset": "v2"})), None),
            (
                d(json!({"host": "frontend-us-west-2.shop.svc.cluster.local"})),
                Some("us-west-2"),
            ),
            (
                d(json!({"host": "frontend.ap-southeast-2.example.com"})),
                Some("ap-southeast-2"),
            ),
            (
                d(json!({"host": "frontend.us-gov-west-1.example.com"})),
                Some("us-gov-west-1"),
            ),
            (d(json!({"host": "api-moon-1.example.com"})), Some("moon-1")),
            (d(json!({"host": "frontend"})), None),
        ];
        for (destination, expected) in cases {
            assert_eq!(
                destination_region(&destination, "us-east-1", &facts).as_deref(),
                expected,
                "{destination}"
            );
        }
        assert!(!looks_like_region("us-east"));
        assert!(!looks_like_region("usa-east-1"));
    }

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

    fn settings(vars: &[(&str, &str)]) -> Result<FailoverSettings> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        FailoverSettings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn settings_are_read_and_bad_ones_name_the_variable() {
        let s = settings(&[
            (
                "REGION_HEALTH_URLS",
                "us-west-2=https://health.us-west-2.example.com/ready, eu-west-1=http://10.0.0.1:8080/",
            ),
            ("HEALTH_CHECK_TIMEOUT_MS", "500"),
        ])
        .expect("valid");
        assert_eq!(s.health_urls.len(), 2);
        assert_eq!(s.health_urls[1].0, "eu-west-1");
        assert_eq!(s.health_timeout, Duration::from_millis(500));
        assert!(!s.failback_on_resolve);
        for (var, value) in [
            ("REGION_HEALTH_URLS", "us-west-2"),
            ("REGION_HEALTH_URLS", "us-west-2=not a url"),
            ("REGION_HEALTH_URLS", "us-west-2=ftp://x/"),
            ("REGION_HEALTH_URLS", "a=http://x/,a=http://y/"),
            ("REGION_HEALTH_URLS", "-bad-=http://x/"),
            ("HEALTH_CHECK_TIMEOUT_MS", "0"),
            ("FAILBACK_ON_RESOLVE", "perhaps"),
        ] {
            match settings(&[(var, value)]) {
                Err(Error::Config { var: got, .. }) => assert_eq!(got, var, "{value}"),
                other => panic!("{var}={value}: {other:?}"),
            }
        }
    }

    fn object(kind: &str, spec: Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "networking.istio.io/v1", "kind": kind,
            "metadata": {"name": "frontend", "namespace": "shop"},
            "spec": spec
        }))
        .expect("object")
    }

    #[test]
    fn weights_plan_records_previous_and_applied_routes() {
        let vs = object(
            "VirtualService",
            json!({"hosts": ["frontend"], "http": [{"route": [
                {"destination": {"host": "frontend", "subset": "us-east-1"}, "weight": 60},
                {"destination": {"host": "frontend", "subset": "us-west-2"}, "weight": 30},
                {"destination": {"host": "frontend", "subset": "eu-west-1"}, "weight": 10},
            ]}]}),
        );
        let plan = RegionFailover::default()
            .plan_weights(&vs, "us-east-1", &RegionFacts::default())
            .expect("plan");
        let route = &plan.patch["spec"]["http"][0]["route"];
        let got: Vec<i64> = route
            .as_array()
            .expect("route")
            .iter()
            .map(istio::weight)
            .collect();
        assert_eq!(got, vec![0, 75, 25]);
        assert_eq!(
            plan.previous,
            Some(json!({"http": vs.data["spec"]["http"]}))
        );
        assert_eq!(
            plan.applied,
            Some(json!({"http": plan.patch["spec"]["http"]}))
        );
        // No healthy region: refused with each region's health.
        let facts = RegionFacts {
            checked: true,
            health: BTreeMap::from([
                ("us-west-2".into(), Err("HTTP 503 from http://w/".into())),
                ("eu-west-1".into(), Err("no answer".into())),
            ]),
            ..RegionFacts::default()
        };
        match RegionFailover::default().plan_weights(&vs, "us-east-1", &facts) {
            Err(Refusal::Fail(why)) => {
                assert!(why.contains("no healthy region"), "{why}");
                assert!(why.contains("us-west-2: HTTP 503"), "{why}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn locality_failover_adds_outlier_detection_only_when_absent() {
        let facts = RegionFacts {
            known_regions: vec!["us-east-1".into(), "us-west-2".into()],
            ..RegionFacts::default()
        };
        let rule = object(
            "DestinationRule",
            json!({"host": "frontend", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}),
        );
        let plan = RegionFailover::default()
            .plan_locality_failover(&rule, "us-east-1", &facts)
            .expect("plan");
        assert_eq!(
            plan.patch,
            json!({"spec": {"trafficPolicy": {
                "loadBalancer": {"localityLbSetting": {"failover": [{"from": "us-east-1", "to": "us-west-2"}]}},
                "outlierDetection": failover_outlier_detection(),
            }}})
        );
        assert_eq!(
            plan.previous,
            Some(json!({"trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}))
        );
        let applied = plan.applied.expect("applied")["trafficPolicy"].clone();
        assert_eq!(applied["tls"], json!({"mode": "ISTIO_MUTUAL"}));
        let again = object(
            "DestinationRule",
            json!({"host": "frontend", "trafficPolicy": applied}),
        );
        assert!(matches!(
            RegionFailover::default().plan_locality_failover(&again, "us-east-1", &facts),
            Err(Refusal::Skip(_))
        ));
        let with_outlier = object(
            "DestinationRule",
            json!({"host": "frontend", "trafficPolicy": {"outlierDetection": {"consecutive5xxErrors": 2}}}),
        );
        let plan = RegionFailover::default()
            .plan_locality_failover(&with_outlier, "us-east-1", &facts)
            .expect("plan");
        assert!(
            plan.patch["spec"]["trafficPolicy"]
                .get("outlierDetection")
                .is_none()
        );
        // Not when weights do the job, and not against distribute.
        let split = RegionFacts {
            split_by_virtual_service: true,
            ..facts.clone()
        };
        assert!(matches!(
            RegionFailover::default().plan_locality_failover(&rule, "us-east-1", &split),
            Err(Refusal::Skip(_))
        ));
        let distribute = object(
            "DestinationRule",
            json!({"host": "frontend", "trafficPolicy": {"loadBalancer": {"localityLbSetting": {
                "distribute": [{"from": "us-east-1/*", "to": {"us-west-2/*": 100}}]}}}}),
        );
        assert!(matches!(
            RegionFailover::default().plan_locality_failover(&distribute, "us-east-1", &facts),
            Err(Refusal::Fail(_))
        ));
        // No region to go to.
        assert!(matches!(
            RegionFailover::default().plan_locality_failover(
                &rule,
                "us-east-1",
                &RegionFacts::default()
            ),
            Err(Refusal::Fail(_))
        ));
    }
}
