//! Smaller candidates of a mesh, for reducing a failing one to a minimal example: drop a
//! client namespace, a rule, a client, a pod or endpoint, and any node of a rule (a subset, a
//! port-level entry, a field, a label). Only valid candidates are proposed, smallest first.

use std::collections::BTreeSet;

use serde_json::Value;

use super::{ClientSpec, Database, GeneratedMesh};
use crate::generated::prune::{normalize, removable, remove};
use crate::generated::root_template;

impl GeneratedMesh {
    /// Smaller meshes derived from this one, valid (CRD schema and Istio's rules), distinct,
    /// smallest first (the largest reductions are tried first).
    pub fn shrink(&self) -> Vec<GeneratedMesh> {
        let mut out = Vec::new();
        self.drop_namespaces(&mut out);
        for (index, _) in self.rules() {
            let mut smaller = self.clone();
            smaller.objects.remove(index);
            out.push(smaller);
        }
        self.drop_clients(&mut out);
        self.drop_world_objects(&mut out);
        self.drop_endpoints(&mut out);
        for (index, rule) in self.rules() {
            for pointer in removable(rule) {
                let mut smaller = self.clone();
                let object = &mut smaller.objects[index];
                remove(object, &pointer);
                normalize(object);
                out.push(smaller);
            }
        }
        let mut seen = BTreeSet::new();
        let mut valid: Vec<GeneratedMesh> = out
            .into_iter()
            .filter(|m| m != self && m.invalid().is_none())
            .filter(|m| seen.insert(format!("{:?}{:?}{:?}", m.objects, m.world, m.clients)))
            .collect();
        valid.sort_by_key(GeneratedMesh::size);
        valid
    }

    /// A client namespace that is neither the alert's nor the database's, with everything
    /// in it.
    fn drop_namespaces(&self, out: &mut Vec<GeneratedMesh>) {
        let root = root_template();
        for namespace in &self.namespaces {
            if *namespace == self.alert_namespace
                || *namespace == self.db_namespace
                || *namespace == root
            {
                continue;
            }
            let mut smaller = self.clone();
            smaller.namespaces.retain(|n| n != namespace);
            smaller.clients.retain(|c| c.namespace != *namespace);
            let elsewhere = |o: &Value| o["metadata"]["namespace"] != namespace.as_str();
            smaller.objects.retain(elsewhere);
            smaller.world.retain(elsewhere);
            for object in &mut smaller.objects {
                forget_namespace(object, namespace);
            }
            out.push(smaller);
        }
    }

    /// A client proxy, keeping one of the calling app in the alert's namespace.
    fn drop_clients(&self, out: &mut Vec<GeneratedMesh>) {
        let caller = |c: &ClientSpec| {
            c.namespace == self.alert_namespace && c.labels["app"] == self.calling_service
        };
        let callers = self.clients.iter().filter(|c| caller(c)).count();
        for (i, client) in self.clients.iter().enumerate() {
            if caller(client) && callers == 1 {
                continue;
            }
            let mut smaller = self.clone();
            smaller.clients.remove(i);
            out.push(smaller);
        }
    }

    /// A pod or a client's Service the oracle alone sees (a database keeps one pod).
    fn drop_world_objects(&self, out: &mut Vec<GeneratedMesh>) {
        let db_pods = self.world.iter().filter(|o| is_db_pod(o)).count();
        for (i, object) in self.world.iter().enumerate() {
            if is_db_pod(object) && db_pods == 1 {
                continue;
            }
            let mut smaller = self.clone();
            smaller.world.remove(i);
            out.push(smaller);
        }
    }

    /// A ServiceEntry endpoint (a static entry keeps one), its VIP, a Service's extra port.
    fn drop_endpoints(&self, out: &mut Vec<GeneratedMesh>) {
        let Some(index) = self
            .objects
            .iter()
            .position(|o| o["kind"] == "ServiceEntry" || o["kind"] == "Service")
        else {
            return;
        };
        let spec = &self.objects[index]["spec"];
        let endpoints = spec["endpoints"].as_array().map_or(0, Vec::len);
        let keep = usize::from(self.database == Database::StaticEntry);
        for i in 0..endpoints {
            if endpoints > keep {
                let mut smaller = self.clone();
                remove(&mut smaller.objects[index], &format!("/spec/endpoints/{i}"));
                normalize(&mut smaller.objects[index]);
                out.push(smaller);
            }
        }
        if spec.get("addresses").is_some() {
            let mut smaller = self.clone();
            remove(&mut smaller.objects[index], "/spec/addresses");
            out.push(smaller);
        }
        if spec["ports"].as_array().is_some_and(|p| p.len() > 1) {
            let mut smaller = self.clone();
            remove(&mut smaller.objects[index], "/spec/ports/1");
            out.push(smaller);
        }
    }
}

/// A pod of the database (its pods carry a `role`).
fn is_db_pod(object: &Value) -> bool {
    object["kind"] == "Pod" && object["metadata"]["labels"].get("role").is_some()
}

/// A rule's `exportTo` entries naming a namespace that no longer exists go too.
fn forget_namespace(rule: &mut Value, namespace: &str) {
    if let Some(Value::Array(export)) = rule.pointer_mut("/spec/exportTo") {
        export.retain(|e| e != namespace);
        if export.is_empty()
            && let Some(spec) = rule["spec"].as_object_mut()
        {
            spec.remove("exportTo");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_are_smaller_valid_and_reach_a_floor() {
        for seed in 0..40 {
            let mut mesh = GeneratedMesh::generate(seed);
            let mut steps = 0;
            loop {
                let candidates = mesh.shrink();
                for c in &candidates {
                    assert!(c.size() < mesh.size(), "seed {seed}");
                    assert!(c.invalid().is_none());
                }
                let Some(first) = candidates.into_iter().next() else {
                    break;
                };
                mesh = first;
                steps += 1;
                assert!(steps < 500, "seed {seed}: shrinking does not end");
            }
            assert!(mesh.rules().count() == 0, "seed {seed}: {}", mesh.to_yaml());
        }
    }
}
