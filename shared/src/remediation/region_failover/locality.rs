//! The DestinationRule lever, for services no VirtualService splits per region: an active
//! drain with `localityLbSetting.distribute`. Every client (`from: "*"`) sends its calls to
//! the healthy regions in equal shares and none to the degraded one, at once and whether or
//! not the degraded region's pods still answer (a `failover` entry would only act after
//! outlier detection ejected them, and only for clients in the degraded region).

use kube::api::DynamicObject;
use serde_json::{Map, Value, json};

use super::RegionFailover;
use super::health::RegionFacts;
use crate::remediation::hosts::{self, PolicyLevel};
use crate::remediation::istio;
use crate::remediation::{Plan, Refusal};

/// `distribute` weights: 100 split equally over `regions` (the remainder to the first
/// ones), keyed `<region>/*` as Istio's localities are.
pub fn equal_shares(regions: &[String]) -> Map<String, Value> {
    let count = regions.len().max(1) as u64;
    regions
        .iter()
        .enumerate()
        .map(|(i, region)| {
            let extra = u64::from((i as u64) < 100 % count);
            (format!("{region}/*"), json!(100 / count + extra))
        })
        .collect()
}

impl RegionFailover {
    /// Plans the drain of `degraded` on one DestinationRule; pure.
    pub fn plan_locality_drain(
        &self,
        object: &DynamicObject,
        degraded: &str,
        facts: &RegionFacts,
    ) -> Result<Plan, Refusal> {
        if facts.split_by_virtual_service {
            return Err(Refusal::Skip(
                "traffic is shifted by VirtualService weights; the DestinationRule is left alone"
                    .into(),
            ));
        }
        let healthy: Vec<String> = facts
            .known_regions
            .iter()
            .filter(|r| *r != degraded && facts.healthy(r).is_ok())
            .cloned()
            .collect();
        if healthy.is_empty() {
            return Err(Refusal::Fail(format!(
                "no healthy region to drain {degraded} to ({}); list the regions in REGION_HEALTH_URLS",
                facts.health_report(degraded, &[])
            )));
        }
        let distribute = json!([{"from": "*", "to": equal_shares(&healthy)}]);
        let previous = istio::fragment(object, ["trafficPolicy", "subsets"]);
        let mut after = previous.clone();
        let mut levels = Vec::new();
        let mut replaced = Vec::new();
        let mut refused = None;
        hosts::for_each_policy_level(&mut after, |policy, level, name| {
            // A subset's policy takes the top level's loadBalancer unless it sets its own;
            // the top level and port entries (which inherit nothing) always need it.
            if level == PolicyLevel::Subset && policy.get("loadBalancer").is_none() {
                return;
            }
            let setting = &mut policy["loadBalancer"]["localityLbSetting"];
            if setting.get("enabled") == Some(&Value::Bool(false)) {
                refused.get_or_insert_with(|| name.to_owned());
                return;
            }
            if setting.is_null() {
                *setting = json!({});
            }
            if let Some(map) = setting.as_object_mut() {
                if map.remove("failover").is_some() {
                    replaced.push(name.to_owned());
                }
                map.insert("distribute".into(), distribute.clone());
            }
            levels.push(name.to_owned());
        });
        if let Some(name) = refused {
            return Err(Refusal::Fail(format!(
                "locality load balancing is disabled at {name} (localityLbSetting.enabled: false); not enabling it automatically"
            )));
        }
        if after == previous {
            return Err(Refusal::Skip(format!(
                "already drained: {degraded} gets no share in localityLbSetting.distribute"
            )));
        }
        let (previous, applied) = hosts::recorded_policy(&previous, &after);
        let shares = equal_shares(&healthy)
            .iter()
            .map(|(locality, weight)| format!("{} {weight}%", locality.trim_end_matches("/*")))
            .collect::<Vec<_>>()
            .join(", ");
        let mut summary = format!(
            "drained {degraded}: every client's calls go to {shares} (localityLbSetting.distribute from *, set at {})",
            levels.join(", ")
        );
        if !replaced.is_empty() {
            summary.push_str(&format!(
                "; it replaces the passive localityLbSetting.failover at {} (Istio allows only one; a revert or failback restores it)",
                replaced.join(", ")
            ));
        }
        Ok(Plan {
            patch: json!({"spec": istio::merge_diff(&previous, &applied)}),
            summary,
            action: "Failover",
            previous: Some(previous),
            applied: Some(applied),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(spec: Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "frontend", "namespace": "shop"},
            "spec": spec
        }))
        .expect("object")
    }

    fn facts() -> RegionFacts {
        RegionFacts {
            known_regions: vec!["us-east-1".into(), "us-west-2".into(), "eu-west-1".into()],
            ..RegionFacts::default()
        }
    }

    #[test]
    fn shares_are_equal_and_add_up_to_100() {
        let regions = |n: usize| (0..n).map(|i| format!("r-{i}")).collect::<Vec<_>>();
        for n in 1..=7 {
            let total: u64 = equal_shares(&regions(n))
                .values()
                .filter_map(Value::as_u64)
                .sum();
            assert_eq!(total, 100, "{n} regions");
        }
        assert_eq!(
            Value::Object(equal_shares(&regions(3))),
            json!({"r-0/*": 34, "r-1/*": 33, "r-2/*": 33})
        );
    }

    #[test]
    fn the_drain_replaces_a_passive_failover_at_every_level_and_records_it_exactly() {
        let object = rule(json!({"host": "frontend",
            "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"},
                "loadBalancer": {"simple": "ROUND_ROBIN", "localityLbSetting": {
                    "enabled": true, "failover": [{"from": "us-east-1", "to": "us-west-2"}]}},
                "portLevelSettings": [{"port": {"number": 8443}, "tls": {"mode": "SIMPLE"}}]},
            "subsets": [{"name": "v1", "labels": {"version": "v1"},
                         "trafficPolicy": {"loadBalancer": {"simple": "LEAST_REQUEST"}}},
                        {"name": "v2", "labels": {"version": "v2"}}]}));
        let plan = RegionFailover::default()
            .plan_locality_drain(&object, "us-east-1", &facts())
            .expect("plan");
        let drain = json!([{"from": "*", "to": {"us-west-2/*": 50, "eu-west-1/*": 50}}]);
        let applied = plan.applied.clone().expect("applied");
        let top = &applied["trafficPolicy"];
        assert_eq!(
            top["loadBalancer"],
            json!({"simple": "ROUND_ROBIN", "localityLbSetting": {"enabled": true, "distribute": drain}})
        );
        assert_eq!(top["tls"], json!({"mode": "ISTIO_MUTUAL"}));
        assert_eq!(
            top["portLevelSettings"][0]["loadBalancer"]["localityLbSetting"]["distribute"],
            drain
        );
        assert_eq!(
            applied["subsets"][0]["trafficPolicy"]["loadBalancer"],
            json!({"simple": "LEAST_REQUEST", "localityLbSetting": {"distribute": drain}})
        );
        assert_eq!(applied["subsets"][1], object.data["spec"]["subsets"][1]);
        assert_eq!(
            plan.previous,
            Some(
                json!({"trafficPolicy": object.data["spec"]["trafficPolicy"],
                        "subsets": object.data["spec"]["subsets"]})
            )
        );
        assert!(
            plan.summary.contains("us-west-2 50%, eu-west-1 50%")
                || plan.summary.contains("eu-west-1 50%, us-west-2 50%"),
            "{}",
            plan.summary
        );
        assert!(
            plan.summary.contains("replaces the passive"),
            "{}",
            plan.summary
        );
        let stored = istio::merged(&object.data["spec"], &plan.patch["spec"]);
        assert_eq!(stored["trafficPolicy"], applied["trafficPolicy"]);
        // Drained already: skipped.
        let again = rule(
            json!({"host": "frontend", "trafficPolicy": applied["trafficPolicy"],
                                "subsets": applied["subsets"]}),
        );
        assert!(matches!(
            RegionFailover::default().plan_locality_drain(&again, "us-east-1", &facts()),
            Err(Refusal::Skip(_))
        ));
    }

    #[test]
    fn refusals_say_why() {
        let plain = rule(json!({"host": "frontend"}));
        let split = RegionFacts {
            split_by_virtual_service: true,
            ..facts()
        };
        assert!(matches!(
            RegionFailover::default().plan_locality_drain(&plain, "us-east-1", &split),
            Err(Refusal::Skip(_))
        ));
        let disabled = rule(
            json!({"host": "frontend", "trafficPolicy": {"loadBalancer": {
            "localityLbSetting": {"enabled": false}}}}),
        );
        match RegionFailover::default().plan_locality_drain(&disabled, "us-east-1", &facts()) {
            Err(Refusal::Fail(why)) => assert!(why.contains("disabled at trafficPolicy"), "{why}"),
            other => panic!("{other:?}"),
        }
        match RegionFailover::default().plan_locality_drain(
            &plain,
            "us-east-1",
            &RegionFacts::default(),
        ) {
            Err(Refusal::Fail(why)) => assert!(why.contains("no healthy region"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
