//! Writing the breaker into a rule: at the levels Istio reads it (the top level, port-level
//! entries, the blocks a subset sets), where [`crate::remediation::resolution::placement`] says clients
//! take them.

use kube::api::DynamicObject;
use serde_json::{Value, json};

use super::settings::{CircuitBreaker, LocalityLb};
use crate::remediation::istio;
use crate::remediation::resolution::hosts::{self, PolicyLevel};
use crate::remediation::resolution::placement::{self, PolicyChange, Writes};
use crate::remediation::{Plan, Refusal};

/// One rule with the breaker written where `writes` says.
#[derive(Debug, Clone)]
pub struct Written {
    /// `{"trafficPolicy", "subsets"}` before.
    pub previous: Value,
    /// The same after.
    pub after: Value,
    /// The policy levels changed besides the top level, for the summary.
    pub levels: Vec<String>,
    /// Levels whose locality setting wakes up now that outlier detection is on.
    pub woken: Vec<String>,
    /// Subsets whose clients preferred their own region and now spread across regions: they
    /// inherit a `loadBalancer` that `preserve` switched off and sets more than the locality
    /// setting, which the breaker may not copy.
    pub spread: Vec<String>,
}

/// Limits a rule already sets stricter than the breaker's stay: the breaker never loosens.
const LIMITS: [&str; 2] = ["/tcp/maxConnections", "/http/http1MaxPendingRequests"];

/// Whether a locality setting changes where traffic goes once outlier detection is on:
/// failover (explicit or Istio's default by locality) acts only with outlier detection;
/// `distribute` acts without it, and `enabled: false` switches it off.
fn wakes(locality: Option<&Value>) -> bool {
    let Some(setting) = locality else {
        return false;
    };
    let distributes = setting
        .get("distribute")
        .and_then(Value::as_array)
        .is_some_and(|d| !d.is_empty());
    setting.get("enabled") != Some(&json!(false)) && !distributes
}

impl CircuitBreaker {
    /// The rule's policy fragment with the breaker written where `writes` says; pure.
    pub fn write(&self, object: &DynamicObject, writes: &Writes) -> Written {
        let previous = istio::fragment(object, ["trafficPolicy", "subsets"]);
        let mut after = previous.clone();
        let top_detects = previous
            .pointer("/trafficPolicy/outlierDetection")
            .is_some();
        let top_locality = previous
            .pointer("/trafficPolicy/loadBalancer/localityLbSetting")
            .cloned();
        // The breaker puts outlier detection at the top level whenever it writes there, and
        // every subset without its own inherits it.
        let top_detects_after = top_detects || writes.top;
        let mut levels = Vec::new();
        let mut woken = Vec::new();
        let mut spread = Vec::new();
        hosts::for_each_policy_level(&mut after, |policy, level, name| {
            let subset = level == PolicyLevel::Subset;
            let own_detection = policy.get("outlierDetection").is_some();
            let own_balancer = policy.get("loadBalancer").is_some();
            let detected = own_detection || (subset && top_detects);
            let locality = match level {
                PolicyLevel::Subset if !own_balancer => top_locality.clone(),
                _ => policy.pointer("/loadBalancer/localityLbSetting").cloned(),
            };
            if writes.covers(level, name) {
                let before = policy.clone();
                // A subset's policy overrides block by block: only the blocks it sets need
                // the breaker. The top level and port entries (which inherit nothing) get
                // all of it.
                self.set_blocks(policy, !subset, detected);
                if level != PolicyLevel::Top && *policy != before {
                    levels.push(name.to_owned());
                }
            }
            // A subset that inherits both the top level's locality setting and its new
            // outlier detection wakes with the top level, which is named for it.
            let with_the_top = subset && !own_balancer && policy.get("outlierDetection").is_none();
            let detects = policy.get("outlierDetection").is_some() || (subset && top_detects_after);
            if !detected && detects && wakes(locality.as_ref()) && !with_the_top {
                woken.push(name.to_owned());
            }
        });
        if !writes.top {
            // No client takes this rule's top level: it stays as it was.
            after["trafficPolicy"] = previous["trafficPolicy"].clone();
        } else {
            spread = Self::keep_subset_preference(&previous, &mut after, writes);
        }
        Written {
            previous,
            after,
            levels,
            woken,
            spread,
        }
    }

    /// A subset with outlier detection of its own and no `loadBalancer` inherits the top
    /// level's: when `preserve` switched the locality preference off there, the subset, whose
    /// preference was already on, keeps it with `localityLbSetting.enabled: true` of its own
    /// (Istio's default, so its clusters compile as before). Where the inherited
    /// `loadBalancer` also sets other fields (the admission policy lets the breaker write only
    /// the locality setting, and a subset's own `loadBalancer` replaces the inherited one
    /// whole), the subset's preference goes off: returned, so the outcome says so.
    fn keep_subset_preference(previous: &Value, after: &mut Value, writes: &Writes) -> Vec<String> {
        // The levels whose preference `preserve` switched off: the top level, and each of its
        // port entries (a subset cluster on that port starts from the port entry, not the
        // top level: Istio's `MergeSubsetTrafficPolicy`).
        let switched = |before: Option<&Value>, now: Option<&Value>| {
            before.and_then(|lb| lb.get("localityLbSetting")).is_none()
                && now.and_then(|lb| lb.pointer("/localityLbSetting/enabled"))
                    == Some(&json!(false))
        };
        let mut off = switched(
            previous.pointer("/trafficPolicy/loadBalancer"),
            after.pointer("/trafficPolicy/loadBalancer"),
        );
        let ports = |v: &Value| {
            v.pointer("/trafficPolicy/portLevelSettings")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        };
        let before_ports = ports(previous);
        for entry in ports(after) {
            let number = entry.pointer("/port/number");
            let before = before_ports
                .iter()
                .find(|e| e.pointer("/port/number") == number)
                .and_then(|e| e.get("loadBalancer"));
            off |= switched(before, entry.get("loadBalancer"));
        }
        if !off {
            return Vec::new();
        }
        // The subset's own `loadBalancer` replaces, on every port, the one it inherited (the
        // top level's or a port entry's): only where they all set nothing but the locality
        // setting is `enabled: true` the same as before.
        let inherited = std::iter::once(previous.pointer("/trafficPolicy/loadBalancer"))
            .chain(before_ports.iter().map(|e| e.get("loadBalancer")));
        let top_lb_only_locality = inherited.into_iter().all(|lb| {
            lb.and_then(Value::as_object)
                .is_none_or(|lb| lb.keys().all(|k| k == "localityLbSetting"))
        });
        let mut spread = Vec::new();
        let subsets = after.get_mut("subsets").and_then(Value::as_array_mut);
        for subset in subsets.into_iter().flatten() {
            let name = subset["name"].as_str().unwrap_or_default().to_owned();
            let Some(policy) = subset
                .get_mut("trafficPolicy")
                .and_then(Value::as_object_mut)
            else {
                continue;
            };
            if !writes.subsets.contains(&name)
                || !policy.contains_key("outlierDetection")
                || policy.contains_key("loadBalancer")
            {
                continue;
            }
            if top_lb_only_locality {
                policy.insert(
                    "loadBalancer".into(),
                    json!({"localityLbSetting": {"enabled": true}}),
                );
            } else {
                spread.push(name);
            }
        }
        spread
    }

    /// `whole`: every block (a level that inherits nothing); else only the blocks set.
    /// `detected`: outlier detection was already on for the level, so locality-prioritised
    /// load balancing already acted and `preserve` has nothing to keep off.
    fn set_blocks(&self, level: &mut Value, whole: bool, detected: bool) {
        let wanted = self.policy_patch();
        for block in ["connectionPool", "outlierDetection"] {
            if whole || level.get(block).is_some() {
                let current = level.get(block).cloned().unwrap_or_else(|| json!({}));
                level[block] = keep_stricter(&current, &wanted[block]);
            }
        }
        let has_locality = level.pointer("/loadBalancer/localityLbSetting").is_some();
        if self.locality_lb == LocalityLb::Preserve
            && !detected
            && !has_locality
            && (whole || level.get("loadBalancer").is_some())
        {
            level["loadBalancer"]["localityLbSetting"] = json!({"enabled": false});
        }
    }

    /// Whether the breaker is in force in `policy` (a level of the kind `whole` says): writing
    /// it again would change nothing.
    pub fn in_force(&self, policy: &Value, whole: bool) -> bool {
        let mut again = if policy.is_null() {
            json!({})
        } else {
            policy.clone()
        };
        // Once written, the level has outlier detection: nothing more to keep off.
        self.set_blocks(&mut again, whole, true);
        again == *policy
    }
}

/// The breaker's values, except where the rule is already stricter: lower connection and
/// pending-request limits, a shorter connect timeout, fewer consecutive errors (a
/// `consecutive5xxErrors: 0` is ejection switched off, not a strict limit).
fn keep_stricter(current: &Value, wanted: &Value) -> Value {
    let mut out = istio::merged(current, wanted);
    for pointer in LIMITS {
        if let (Some(old), Some(slot)) = (
            current.pointer(pointer).and_then(Value::as_u64),
            out.pointer_mut(pointer),
        ) && slot.as_u64().is_some_and(|new| old < new)
        {
            *slot = json!(old);
        }
    }
    if let (Some(old), Some(slot)) = (
        current.get("consecutive5xxErrors").and_then(Value::as_u64),
        out.get_mut("consecutive5xxErrors"),
    ) && old > 0
        && slot.as_u64().is_some_and(|new| old < new)
    {
        *slot = json!(old);
    }
    let nanos = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .and_then(|d| istio::duration_nanos(d).ok())
    };
    if let (Some(old), Some(new)) = (
        nanos(current.pointer("/tcp/connectTimeout")),
        nanos(out.pointer("/tcp/connectTimeout")),
    ) && old < new
    {
        out["tcp"]["connectTimeout"] = current["tcp"]["connectTimeout"].clone();
    }
    out
}

impl PolicyChange for CircuitBreaker {
    fn function(&self) -> &'static str {
        "db-circuit-break"
    }

    fn written(&self, rule: &DynamicObject, writes: &Writes) -> Value {
        self.write(rule, writes).after
    }

    fn in_force(&self, policy: &Value, level: PolicyLevel) -> bool {
        CircuitBreaker::in_force(self, policy, level != PolicyLevel::Subset)
    }

    fn beside(&self, policy: &Value) -> Value {
        placement::without(policy, &["connectionPool", "outlierDetection"], true)
    }
}

/// The plan for one rule from the outlook; pure.
pub fn plan_rule(
    breaker: &CircuitBreaker,
    object: &DynamicObject,
    writes: &Writes,
) -> Result<Plan, Refusal> {
    let written = breaker.write(object, writes);
    if written.after == written.previous {
        return Err(Refusal::Skip(
            "circuit breaker already set as configured".into(),
        ));
    }
    // Record only what changes: `subsets` is left out when no subset changes.
    let (previous, applied) = hosts::recorded_policy(&written.previous, &written.after);
    let mut summary = breaker.summary();
    if !written.spread.is_empty() {
        summary.push_str(&format!(
            "; clients of subsets {} preferred their own region and now spread across regions: they inherit the top level's loadBalancer, where CB_LOCALITY_LB=preserve switches the preference off, and it sets more than the locality setting the breaker may write",
            written.spread.join(", ")
        ));
    }
    if !written.levels.is_empty() {
        summary.push_str(&format!(
            "; also where Istio would replace them: {}",
            written.levels.join(", ")
        ));
    }
    if !writes.top {
        summary.push_str(
            "; the top-level policy is left alone: Istio takes another rule's for every client",
        );
    }
    summary.push_str(&match (breaker.locality_lb, written.woken.is_empty()) {
        (LocalityLb::Preserve, true) => "; locality-prioritised load balancing kept off where the rule did not set it (CB_LOCALITY_LB=preserve), so traffic spreads across regions as before".to_owned(),
        (LocalityLb::Preserve, false) => format!(
            "; the locality failover set at {} acts only with outlier detection and is now active: clients prefer endpoints in their own region and fail over as it says (CB_LOCALITY_LB=preserve keeps off only what the rule did not set)",
            written.woken.join(", ")
        ),
        (LocalityLb::Prioritize, _) => "; outlier detection switches on locality-prioritised load balancing: clients now prefer endpoints in their own region (CB_LOCALITY_LB=prioritize)".to_owned(),
    });
    Ok(Plan {
        patch: json!({ "spec": istio::merge_diff(&previous, &applied) }),
        summary,
        action: "CircuitBreak",
        previous: Some(previous),
        applied: Some(applied),
    })
}
