//! `region-failover`: drain a degraded region of a service's traffic, for every client.
//!
//! Two levers, on objects labelled `auto_remediation=active` (in any namespace):
//!
//! 1. **VirtualService weights** (preferred: explicit and immediate) — [`weights`]. In every
//!    HTTP route that splits the service per region, the degraded region's weight goes to 0
//!    and is spread over the *healthy* remaining regions in proportion to their current
//!    weights (integers, the total kept, largest remainder, ties to the earlier destination).
//!    Regions that fail their health check keep their weight but receive nothing more. A
//!    destination's region is, in this order: the `topology.kubernetes.io/region` label of
//!    its DestinationRule subset; its subset name when that is a known or AWS-shaped region
//!    name; a region name inside its host (`frontend-us-east-1`, `frontend.eu-west-1.example.com`).
//! 2. **DestinationRule locality distribution**, only when no opted-in VirtualService splits
//!    the service per region — [`locality`]: `localityLbSetting.distribute` from every
//!    client locality (`*`) to the healthy regions in equal shares, at every traffic-policy
//!    level Istio would otherwise take instead. It acts at once; a locality `failover`
//!    entry acts only once outlier detection has ejected the degraded region's endpoints,
//!    and only for clients in that region, so it is replaced (and restored on revert).
//!
//! Health ([`health`]): with `REGION_HEALTH_URLS` unset, every region but the degraded one
//! counts as healthy (the alert is the only signal). Once it is set, a region is healthy
//! only if its URL answers 2xx within `HEALTH_CHECK_TIMEOUT_MS`; a region without a URL is
//! unknown and gets no traffic. No healthy region left: nothing changes and the alert fails
//! with the health of each region as the reason.
//!
//! A resolved alert restores the previous weights / policy when `FAILBACK_ON_RESOLVE` is
//! on (default off: failing back into a region that just recovered is a human call); a
//! revert request does the same on demand.

use std::sync::OnceLock;

use futures::future::BoxFuture;
use kube::api::{ApiResource, DynamicObject};

use super::istio;
use super::istio::restore::{self, OnEdit};
use super::resolution::Resolver;
use super::resolution::hosts;
use super::resolution::placement::Scope;
use super::{Locator, Plan, PlanContext, Refusal, Remediation};
use crate::cluster::record::ActionRecord;
use crate::config::Config;
use crate::error::Result;
use crate::intake::AlertInput;
use crate::intake::names;

pub mod endpoints;
pub mod facts;
pub mod health;
pub mod locality;
pub mod paths;
pub mod settings;
pub mod weights;

pub use facts::RegionFacts;
pub use health::Health;
pub use settings::FailoverSettings;
pub use weights::{destination_region, looks_like_region, route_regions, shift_weights};

/// The node label holding a node's region, used on DestinationRule subsets.
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";

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
}

/// " (and N more)" for a list of `count` findings named by its first.
fn more(count: usize) -> String {
    match count {
        0 | 1 => String::new(),
        n => format!(" (and {} more)", n - 1),
    }
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
    /// Each region's health check, once per alert for every cluster of the mesh.
    type Observed = Health;

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
        paths::carries(object, &host) || hosts::rule_host_is(object, &host)
    }

    fn mesh_wide(&self) -> bool {
        true
    }

    fn observation_key(&self, input: &AlertInput) -> Option<String> {
        // The health checks depend on the degraded region alone.
        Some(degraded_region(input).to_owned())
    }

    fn observe<'a>(&'a self, input: &'a AlertInput) -> BoxFuture<'a, Result<Health>> {
        Box::pin(self.check_health(degraded_region(input)))
    }

    fn prepare<'a>(
        &'a self,
        input: &'a AlertInput,
        client: &'a kube::Client,
        config: &'a Config,
        health: &'a Health,
    ) -> BoxFuture<'a, Result<RegionFacts>> {
        Box::pin(async move {
            let host = hosts::alert_host(
                input.alert.label("service").unwrap_or_default(),
                &input.namespace,
            );
            let degraded = degraded_region(input);
            let (rule_kind, vs_kind) = (
                istio::destination_rule(config),
                istio::virtual_service(config),
            );
            let (rules, services) = futures::try_join!(
                istio::list_everywhere(client, &rule_kind),
                istio::list_everywhere(client, &vs_kind),
            )?;
            let mut facts = RegionFacts {
                checked: !self.settings.health_urls.is_empty(),
                health: health.clone(),
                known_regions: self
                    .settings
                    .health_urls
                    .iter()
                    .map(|(r, _)| r.clone())
                    .collect(),
                ..RegionFacts::default()
            };
            let subsets = hosts::subsets(&rules, &host);
            for (name, labels) in &subsets {
                let Some(region) = labels.get(REGION_LABEL) else {
                    continue;
                };
                if !facts.known_regions.contains(region) {
                    facts.known_regions.push(region.clone());
                }
                facts.subset_regions.insert(name.clone(), region.clone());
            }
            facts.root = config.istio_root_namespace.clone();
            facts.changeable = config.policy.namespaces();
            facts.endpoints = endpoints::read(client, &host, &subsets).await?;
            // Where the service runs is a region the drain may send to (when healthy).
            for region in facts.endpoints.iter().flat_map(|e| &e.service) {
                if !facts.known_regions.contains(region) {
                    facts.known_regions.push(region.clone());
                }
            }
            facts.paths = paths::paths(&services, &host, &subsets, degraded, &facts);
            // The DestinationRule is left alone only when every request names its region.
            facts.split_by_virtual_service = facts.paths.unpinned.is_empty();
            facts.stranded = paths::stranded(&rules, &host, &facts.root, &facts.subset_regions);
            facts.virtual_services = services
                .into_iter()
                .filter(|vs| facts.changeable.changes(vs) && paths::carries(vs, &host))
                .collect();
            facts.rules = rules;
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
        let host = hosts::alert_host(
            input.alert.label("service").unwrap_or_default(),
            &input.namespace,
        );
        let facts = context.facts;
        let scope = Scope {
            host: &host,
            namespace: &input.namespace,
            service_namespace: Resolver::service_namespace_of(&host),
            root: &facts.root,
            changeable: &facts.changeable,
        };
        let plan = if is_destination_rule(object) {
            self.plan_drain(object, degraded, facts, Some(&scope))
        } else {
            self.plan_weights(object, degraded, facts)
        };
        // Changing (or leaving) this object is not enough when requests stay on the
        // degraded region.
        if let (Ok(_) | Err(Refusal::Skip(_)), Some(first)) = (&plan, facts.paths.unmoved.first()) {
            return Err(Refusal::Fail(format!(
                "{first}{}: nothing is changed, since a drain would leave those requests on {degraded}; route them with a region split of an opted-in VirtualService (subsets labelled {REGION_LABEL}) or drain by hand",
                more(facts.paths.unmoved.len())
            )));
        }
        let plan = plan?;
        if !facts.split_by_virtual_service
            && !facts.rules.iter().any(|rule| scope.writable(rule))
            && let Some(first) = facts.paths.unpinned.first()
        {
            return Err(Refusal::Fail(format!(
                "{first}{}: only a drain by locality moves those requests and no DestinationRule for {host} is opted in (auto_remediation=active), so nothing is changed",
                more(facts.paths.unpinned.len()),
            )));
        }
        // All or nothing: when another object of the alert cannot take its part of the
        // drain, draining only this one would leave clients on the degraded region.
        let me = super::object::name_of(object);
        let others = facts
            .virtual_services
            .iter()
            .chain(facts.rules.iter().filter(|r| scope.writable(r)))
            .filter(|other| {
                super::object::name_of(other) != me
                    || is_destination_rule(other) != is_destination_rule(object)
            });
        for other in others {
            let planned = if is_destination_rule(other) {
                self.plan_drain(other, degraded, facts, Some(&scope))
            } else {
                self.plan_weights(other, degraded, facts)
            };
            if let Err(Refusal::Fail(why)) = planned {
                return Err(Refusal::Fail(format!(
                    "{} {} cannot take its part ({why}); draining only the others would leave clients on {degraded}, so nothing is changed",
                    if is_destination_rule(other) {
                        "DestinationRule"
                    } else {
                        "VirtualService"
                    },
                    super::object::name_of(other)
                )));
            }
        }
        Ok(plan)
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
            .then(|| restore::plan_restore(object, record, self.name(), "Failback", OnEdit::Hold))
    }

    fn revertible(&self, config: &Config) -> Vec<ApiResource> {
        istio::revertible(config)
    }

    fn plan_revert(
        &self,
        object: &DynamicObject,
        record: &ActionRecord,
    ) -> std::result::Result<Plan, Refusal> {
        restore::plan_restore(object, record, self.name(), "Revert", OnEdit::Fail)
    }
}
