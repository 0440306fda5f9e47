//! The VirtualService lever: per-region route weights, the degraded region's share moved to
//! the healthy ones.

use kube::api::DynamicObject;
use serde_json::Value;

use super::RegionFailover;
use super::facts::RegionFacts;
use crate::remediation::istio;
use crate::remediation::{Plan, Refusal};

impl RegionFailover {
    /// Plans new weights for one VirtualService; pure.
    pub fn plan_weights(
        &self,
        object: &DynamicObject,
        degraded: &str,
        facts: &RegionFacts,
    ) -> std::result::Result<Plan, Refusal> {
        let http = istio::http_routes(object);
        // A route with one destination sends it everything, whatever the weights say.
        for (index, route) in http.iter().enumerate() {
            let destinations = route.get("route").and_then(Value::as_array);
            if let Some([only]) = destinations.map(Vec::as_slice)
                && destination_region(only, degraded, facts).as_deref() == Some(degraded)
            {
                let name = route
                    .get("name")
                    .and_then(Value::as_str)
                    .map_or_else(|| format!("route {index}"), |n| format!("route {n}"));
                return Err(Refusal::Fail(format!(
                    "{name} sends all its requests to {} in {degraded} (its only destination): shifting weights cannot move them, so nothing is changed; give the route destinations in the other regions",
                    istio::destination_name(only)
                )));
            }
        }
        let reweighed = istio::reweigh_routes(&http, |_, destinations| {
            let Some(regions) = route_regions(destinations, degraded, facts) else {
                return Ok(None);
            };
            let weights: Vec<i64> = destinations.iter().map(istio::weight).collect();
            shift_weights(&weights, &regions, degraded, |r| facts.receives(r).is_ok())
                .map(Some)
                .ok_or_else(|| {
                    Refusal::Fail(format!(
                        "no healthy region that every client reaches to take {degraded}'s traffic ({}); nothing changed, humans must decide",
                        facts.health_report(degraded, &regions)
                    ) + &facts
                        .stranded
                        .values()
                        .map(|why| format!("; {why}"))
                        .collect::<String>())
                })
        })?;
        if reweighed.considered == 0 {
            return Err(Refusal::Hold(format!(
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;

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
            Some(json!({"httpRoutes": {"0": vs.data["spec"]["http"][0]["route"]}}))
        );
        assert_eq!(
            plan.applied,
            Some(json!({"httpRoutes": {"0": plan.patch["spec"]["http"][0]["route"]}}))
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
}
