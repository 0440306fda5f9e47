//! Traffic policies as owners write them (breaker fields stricter and looser than the
//! remediation's, locality settings), and the rules Istio's validation applies that the API
//! server does not (no `distribute` with `failover`, weights summing to 100, ...).

use serde_json::{Map, Value, json};

use super::generate::Gen;

/// Where a traffic policy sits, which decides what it may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Level {
    Top,
    Subset,
    Port,
}

impl Gen {
    /// A traffic policy for `level`, never empty.
    pub(super) fn policy(&mut self, level: Level) -> Value {
        let top = level == Level::Top;
        let mut policy = Map::new();
        if self.rng.chance(if top { 55 } else { 45 })
            && let Some(pool) = self.connection_pool()
        {
            policy.insert("connectionPool".into(), pool);
        }
        if self.rng.chance(if top { 45 } else { 35 }) {
            policy.insert("outlierDetection".into(), self.outlier_detection());
        }
        if self.rng.chance(if top { 40 } else { 30 }) {
            policy.insert("loadBalancer".into(), self.load_balancer(level));
        }
        if self.rng.chance(12) {
            let mode = if self.external {
                "DISABLE"
            } else {
                *self.rng.pick(&["ISTIO_MUTUAL", "DISABLE"])
            };
            policy.insert("tls".into(), json!({ "mode": mode }));
        }
        if level != Level::Port && self.rng.chance(if top { 30 } else { 15 }) {
            policy.insert("portLevelSettings".into(), self.port_level_settings());
        }
        let has_own_field = policy.keys().any(|k| k != "portLevelSettings");
        if !has_own_field && (level == Level::Port || self.rng.chance(50)) || policy.is_empty() {
            let max = *self.rng.pick(&[5, 64, 100, 1000]);
            policy.insert(
                "connectionPool".into(),
                json!({"tcp": {"maxConnections": max}}),
            );
        }
        Value::Object(policy)
    }

    fn port_level_settings(&mut self) -> Value {
        let mut ports = vec![super::DB_PORT];
        if self.metrics_port || self.rng.chance(20) {
            ports.push(super::METRICS_PORT);
        }
        let count = self.rng.range(1, ports.len());
        let chosen = self.rng.sample(&ports, count);
        Value::Array(
            chosen
                .into_iter()
                .map(|port| {
                    let mut entry = self.policy(Level::Port);
                    entry["port"] = json!({ "number": port });
                    entry
                })
                .collect(),
        )
    }

    fn connection_pool(&mut self) -> Option<Value> {
        let mut pool = Map::new();
        if self.rng.chance(75) {
            let mut tcp = Map::new();
            if self.rng.chance(70) {
                let max = *self.rng.pick(&[1, 10, 64, 99, 100, 101, 500, 4096]);
                tcp.insert("maxConnections".into(), json!(max));
            }
            if self.rng.chance(50) {
                let timeout = *self
                    .rng
                    .pick(&["100ms", "1s", "1500ms", "2s", "2500ms", "10s"]);
                tcp.insert("connectTimeout".into(), json!(timeout));
            }
            if !tcp.is_empty() {
                pool.insert("tcp".into(), Value::Object(tcp));
            }
        }
        if self.rng.chance(50) {
            let mut http = Map::new();
            if self.rng.chance(70) {
                let pending = *self.rng.pick(&[1, 32, 64, 65, 1024]);
                http.insert("http1MaxPendingRequests".into(), json!(pending));
            }
            if self.rng.chance(40) {
                let max = *self.rng.pick(&[100, 1000]);
                http.insert("http2MaxRequests".into(), json!(max));
            }
            if self.rng.chance(15) {
                http.insert("maxRetries".into(), json!(3));
            }
            if !http.is_empty() {
                pool.insert("http".into(), Value::Object(http));
            }
        }
        (!pool.is_empty()).then_some(Value::Object(pool))
    }

    fn outlier_detection(&mut self) -> Value {
        let mut od = Map::new();
        if self.rng.chance(70) {
            let errors = *self.rng.pick(&[0, 0, 1, 3, 5, 6, 20]);
            od.insert("consecutive5xxErrors".into(), json!(errors));
        }
        if self.rng.chance(25) {
            let errors = *self.rng.pick(&[0, 2, 10]);
            od.insert("consecutiveGatewayErrors".into(), json!(errors));
        }
        if self.rng.chance(50) {
            let interval = *self.rng.pick(&["1s", "10s", "30s"]);
            od.insert("interval".into(), json!(interval));
        }
        if self.rng.chance(40) {
            let time = *self.rng.pick(&["10s", "30s", "3m"]);
            od.insert("baseEjectionTime".into(), json!(time));
        }
        if self.rng.chance(40) {
            let percent = *self.rng.pick(&[10, 50, 100]);
            od.insert("maxEjectionPercent".into(), json!(percent));
        }
        if self.rng.chance(10) {
            let percent = *self.rng.pick(&[0, 25]);
            od.insert("minHealthPercent".into(), json!(percent));
        }
        Value::Object(od)
    }

    fn load_balancer(&mut self, level: Level) -> Value {
        let mut lb = Map::new();
        if self.rng.chance(50) {
            let simple = *self.rng.pick(&["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"]);
            lb.insert("simple".into(), json!(simple));
        }
        if self.rng.chance(if level == Level::Top { 75 } else { 35 }) {
            lb.insert("localityLbSetting".into(), self.locality());
        }
        if lb.is_empty() {
            lb.insert("simple".into(), json!("LEAST_REQUEST"));
        }
        Value::Object(lb)
    }

    /// A `localityLbSetting`: off, on, `failover` entries, or `distribute` per client region.
    fn locality(&mut self) -> Value {
        let regions = self.regions.clone();
        match self.rng.below(6) {
            0 => json!({"enabled": false}),
            1 => json!({"enabled": true}),
            2 | 3 => {
                let count = self.rng.range(1, regions.len());
                let from = self.rng.sample(&regions, count);
                let failover: Vec<Value> = from
                    .iter()
                    .map(|f| {
                        let others: Vec<&String> = regions.iter().filter(|r| *r != f).collect();
                        let to = (*self.rng.pick(&others)).clone();
                        json!({"from": f, "to": to})
                    })
                    .collect();
                let mut setting = json!({ "failover": failover });
                if self.rng.chance(20) {
                    setting["enabled"] = json!(true);
                }
                setting
            }
            _ => {
                let count = self.rng.range(1, regions.len());
                let mut from: Vec<String> = self
                    .rng
                    .sample(&regions, count)
                    .into_iter()
                    .map(|r| format!("{r}/*"))
                    .collect();
                if self.rng.chance(25) {
                    from.push("*".into());
                }
                let distribute: Vec<Value> = from
                    .into_iter()
                    .map(|f| {
                        let targets = self.rng.range(1, 2.min(regions.len()));
                        let to = self.rng.sample(&regions, targets);
                        let mut weights = Map::new();
                        if let [only] = to.as_slice() {
                            weights.insert(format!("{only}/*"), json!(100));
                        } else {
                            let w = *self.rng.pick(&[10, 30, 50, 70, 90]);
                            weights.insert(format!("{}/*", to[0]), json!(w));
                            weights.insert(format!("{}/*", to[1]), json!(100 - w));
                        }
                        json!({"from": f, "to": weights})
                    })
                    .collect();
                json!({ "distribute": distribute })
            }
        }
    }
}

/// Istio's validation errors for a DestinationRule that the API server's schema does not
/// catch (the istiod webhook's rules); empty when valid. Other kinds have none here.
pub fn istio_rule_errors(object: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    if object["kind"] != "DestinationRule" {
        return errors;
    }
    let spec = &object["spec"];
    let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default();
    check_policy(&spec["trafficPolicy"], "trafficPolicy", &mut errors);
    let mut names = std::collections::BTreeSet::new();
    for (i, subset) in array(&spec["subsets"]).iter().enumerate() {
        if !names.insert(subset["name"].as_str().unwrap_or_default()) {
            errors.push(format!("subsets[{i}]: duplicate subset name"));
        }
        check_policy(
            &subset["trafficPolicy"],
            &format!("subsets[{i}].trafficPolicy"),
            &mut errors,
        );
    }
    let export: Vec<&str> = array(&spec["exportTo"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    if export.contains(&"*") && export.len() > 1 {
        errors.push("exportTo: * with other entries".into());
    }
    let own = export.iter().filter(|e| **e == "." || **e == namespace);
    if own.count() > 1 {
        errors.push("exportTo: . and the own namespace".into());
    }
    if !spec["workloadSelector"].is_null()
        && !export.is_empty()
        && !(export.len() == 1 && (export[0] == "." || export[0] == namespace))
    {
        errors.push("workloadSelector with exportTo beyond its namespace".into());
    }
    errors
}

fn array(value: &Value) -> &[Value] {
    value.as_array().map_or(&[], Vec::as_slice)
}

fn check_policy(policy: &Value, at: &str, errors: &mut Vec<String>) {
    let Some(map) = policy.as_object() else {
        return;
    };
    if map.is_empty() {
        errors.push(format!("{at}: traffic policy must have at least one field"));
    }
    check_level(policy, at, errors);
    let mut ports = std::collections::BTreeSet::new();
    for (i, entry) in array(&policy["portLevelSettings"]).iter().enumerate() {
        let at = format!("{at}.portLevelSettings[{i}]");
        match entry.pointer("/port/number").and_then(Value::as_u64) {
            Some(port) if ports.insert(port) => {}
            Some(_) => errors.push(format!("{at}: port set twice")),
            None => errors.push(format!("{at}: no port")),
        }
        let fields = ["connectionPool", "outlierDetection", "loadBalancer", "tls"];
        if fields.iter().all(|f| entry.get(*f).is_none()) {
            errors.push(format!(
                "{at}: port traffic policy must have at least one field"
            ));
        }
        check_level(entry, &at, errors);
    }
}

fn check_level(policy: &Value, at: &str, errors: &mut Vec<String>) {
    let locality = &policy["loadBalancer"]["localityLbSetting"];
    let distribute = array(&locality["distribute"]);
    let failover = array(&locality["failover"]);
    if !distribute.is_empty() && !failover.is_empty() {
        errors.push(format!("{at}: distribute and failover together"));
    }
    for entry in distribute {
        let weights = entry["to"].as_object();
        let total: u64 = weights
            .into_iter()
            .flatten()
            .filter_map(|(_, w)| w.as_u64())
            .sum();
        if total != 100 || weights.into_iter().flatten().any(|(_, w)| w == 0) {
            errors.push(format!("{at}: distribute weights sum to {total}, not 100"));
        }
    }
    for entry in failover {
        if entry["from"] == entry["to"] || entry["from"].is_null() || entry["to"].is_null() {
            errors.push(format!("{at}: failover from and to must be two regions"));
        }
    }
}
