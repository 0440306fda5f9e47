//! Smaller candidates of a mesh, for reducing a failing one to a minimal example: drop a
//! client namespace, a DestinationRule or VirtualService, a proxy, a pod; inside a
//! VirtualService drop a route, a destination (weights renormalised), a mirror, a match, an
//! annotation, `exportTo` or `gateways`; inside a rule drop a subset, `exportTo` or a policy.
//! Only schema-valid candidates are proposed, smallest first.

use serde_json::{Value, json};

use super::RollbackMesh;
use crate::generated::prune::without_each;
use crate::generated::{Generated, root_template, worth_trying};

impl RollbackMesh {
    /// Smaller meshes derived from this one, schema-valid, distinct, smallest first.
    pub fn shrink(&self) -> Vec<RollbackMesh> {
        let mut out = Vec::new();
        let root = root_template();
        for ns in &self.namespaces {
            if *ns == self.alert_namespace || *ns == root {
                continue;
            }
            out.push(self.without_namespace(ns));
        }
        for (i, o) in self.objects.iter().enumerate() {
            if o["kind"] == "Service" {
                continue;
            }
            let mut m = self.clone();
            let removed = m.objects.remove(i);
            if removed["metadata"]["name"] == "public" && removed["kind"] == "VirtualService" {
                m.gateway = None;
                m.world.retain(|w| w["kind"] != "Gateway");
            }
            out.push(m);
        }
        if self.clients.len() > 1 {
            out.extend(without_each(self, |m| &mut m.clients, |_| false));
        }
        if self.gateway.is_some() {
            let mut m = self.clone();
            m.gateway = None;
            out.push(m);
        }
        out.extend(without_each(self, |m| &mut m.world, |o| o["kind"] != "Pod"));
        if self.regions.len() > 1 {
            for region in &self.regions {
                let node = format!("node-{region}");
                let mut m = self.clone();
                m.regions.retain(|r| r != region);
                m.world.retain(|w| w["spec"]["nodeName"] != node.as_str());
                let first = m.regions[0].clone();
                for c in &mut m.clients {
                    if c.region == *region {
                        c.region = first.clone();
                    }
                }
                if let Some(g) = &mut m.gateway
                    && g.region == *region
                {
                    g.region = first.clone();
                }
                out.push(m);
            }
        }
        for (i, o) in self.objects.iter().enumerate() {
            let smaller = match o["kind"].as_str() {
                Some("VirtualService") => vs_reductions(o),
                Some("DestinationRule") => rule_reductions(o),
                _ => Vec::new(),
            };
            for object in smaller {
                let mut m = self.clone();
                m.objects[i] = object;
                out.push(m);
            }
        }
        let valid = |m: &RollbackMesh| m.invalid().is_none();
        let rest = |m: &RollbackMesh| format!("{:?}{:?}{:?}", m.clients, m.gateway, m.regions);
        worth_trying(self, out, valid, rest)
    }
}

fn without(object: &Value, pointer: &str, key: &str) -> Option<Value> {
    let mut copy = object.clone();
    let map = copy.pointer_mut(pointer)?.as_object_mut()?;
    map.remove(key)?;
    Some(copy)
}

fn vs_reductions(vs: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    out.extend(without(vs, "/metadata", "annotations"));
    out.extend(without(vs, "/spec", "exportTo"));
    out.extend(without(vs, "/spec", "gateways"));
    let routes = vs["spec"]["http"].as_array().cloned().unwrap_or_default();
    for (i, route) in routes.iter().enumerate() {
        if routes.len() > 1 {
            let mut copy = vs.clone();
            if let Some(http) = copy["spec"]["http"].as_array_mut() {
                http.remove(i);
            }
            out.push(copy);
        }
        let at = format!("/spec/http/{i}");
        for key in ["mirror", "mirrorPercentage", "match", "name"] {
            out.extend(without(vs, &at, key));
        }
        if route.get("mirror").is_some() {
            let mut copy = vs.clone();
            if let Some(map) = copy.pointer_mut(&at).and_then(Value::as_object_mut) {
                map.remove("mirror");
                map.remove("mirrorPercentage");
            }
            out.push(copy);
        }
        let destinations = route["route"].as_array().cloned().unwrap_or_default();
        if destinations.len() > 1 {
            for j in 0..destinations.len() {
                let mut rest = destinations.clone();
                let gone = rest.remove(j);
                renormalise(&mut rest, gone["weight"].as_i64().unwrap_or(0));
                let mut copy = vs.clone();
                copy["spec"]["http"][i]["route"] = json!(rest);
                out.push(copy);
            }
        }
    }
    out
}

/// After a destination with `weight` left: a lone destination loses its weight, else the
/// first takes the weight that left (the sum stays 100).
fn renormalise(rest: &mut [Value], weight: i64) {
    if let [only] = rest {
        if let Some(map) = only.as_object_mut() {
            map.remove("weight");
        }
        return;
    }
    if let Some(first) = rest.first_mut() {
        let now = first["weight"].as_i64().unwrap_or(0);
        first["weight"] = json!(now + weight);
    }
}

fn rule_reductions(rule: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    out.extend(without(rule, "/spec", "exportTo"));
    out.extend(without(rule, "/spec", "trafficPolicy"));
    let subsets = rule["spec"]["subsets"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for i in 0..subsets.len() {
        let mut copy = rule.clone();
        if let Some(list) = copy["spec"]["subsets"].as_array_mut() {
            list.remove(i);
            if list.is_empty()
                && let Some(spec) = copy["spec"].as_object_mut()
            {
                spec.remove("subsets");
            }
        }
        out.push(copy);
    }
    out
}
