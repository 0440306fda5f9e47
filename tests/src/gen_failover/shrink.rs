//! Smaller candidates of a mesh, for reducing a failing one to a minimal example: drop a
//! client namespace, a rule or VirtualService, a client, the gateway, a pod (each region
//! keeps one) or Service, any node of a stored object, or the health check. Only valid candidates are proposed,
//! smallest first.

use std::collections::BTreeSet;

use serde_json::Value;

use super::{FailoverMesh, HealthMode, SERVICE};
use crate::generated::prune::{normalize, removable, remove};
use crate::generated::root_template;

impl FailoverMesh {
    /// Smaller meshes derived from this one, valid (CRD schema and Istio's rules), distinct,
    /// smallest first.
    pub fn shrink(&self) -> Vec<FailoverMesh> {
        let mut out = Vec::new();
        self.drop_namespaces(&mut out);
        for index in 0..self.objects.len() {
            let mut smaller = self.clone();
            smaller.objects.remove(index);
            out.push(smaller);
        }
        if self.clients.len() > 1 {
            for index in 0..self.clients.len() {
                let mut smaller = self.clone();
                smaller.clients.remove(index);
                out.push(smaller);
            }
        }
        if self.gateway.is_some() {
            let mut smaller = self.clone();
            smaller.gateway = None;
            smaller.world.retain(|o| o["kind"] != "Gateway");
            out.push(smaller);
        }
        // Every region keeps a pod of `frontend` (the generator's promise: without one, a
        // region the function is told is healthy cannot take traffic, another story).
        let region_of = |o: &Value| o["metadata"]["labels"]["region"].clone();
        let pods_in = |region: &Value| {
            self.world
                .iter()
                .filter(|o| o["kind"] == "Pod" && region_of(o) == *region)
                .count()
        };
        for (index, object) in self.world.iter().enumerate() {
            let last_pod = object["kind"] == "Pod" && pods_in(&region_of(object)) == 1;
            let main_service = object["kind"] == "Service" && object["metadata"]["name"] == SERVICE;
            if last_pod || main_service || object["kind"] == "Gateway" {
                continue;
            }
            let mut smaller = self.clone();
            smaller.world.remove(index);
            out.push(smaller);
        }
        for (index, object) in self.objects.iter().enumerate() {
            for pointer in removable(object) {
                let mut smaller = self.clone();
                let object = &mut smaller.objects[index];
                remove(object, &pointer);
                normalize(object);
                out.push(smaller);
            }
        }
        let simpler = match self.health {
            HealthMode::Unconfigured => Vec::new(),
            HealthMode::AllHealthy => vec![HealthMode::Unconfigured],
            HealthMode::Unhealthy(_) => vec![HealthMode::AllHealthy, HealthMode::Unconfigured],
        };
        for health in simpler {
            out.push(FailoverMesh {
                health,
                ..self.clone()
            });
        }
        let mut seen = BTreeSet::new();
        let mut valid: Vec<FailoverMesh> = out
            .into_iter()
            .filter(|m| m != self && m.invalid().is_none())
            .filter(|m| {
                seen.insert(format!(
                    "{:?}{:?}{:?}{:?}{:?}",
                    m.objects, m.world, m.clients, m.gateway, m.health
                ))
            })
            .collect();
        valid.sort_by_key(FailoverMesh::size);
        valid
    }

    /// A client namespace other than the alert's and the root, with everything in it.
    fn drop_namespaces(&self, out: &mut Vec<FailoverMesh>) {
        let keep = [Self::alert_template(), root_template()];
        for namespace in &self.namespaces {
            if keep.contains(namespace) {
                continue;
            }
            let mut smaller = self.clone();
            smaller.namespaces.retain(|n| n != namespace);
            smaller.clients.retain(|c| c.namespace != *namespace);
            let elsewhere = |o: &Value| o["metadata"]["namespace"] != namespace.as_str();
            smaller.objects.retain(elsewhere);
            smaller.world.retain(elsewhere);
            if !smaller.clients.is_empty() {
                out.push(smaller);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_are_smaller_valid_and_reach_a_floor() {
        for seed in 0..40 {
            let mut mesh = FailoverMesh::generate(seed);
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
            assert!(mesh.objects.is_empty(), "seed {seed}: {}", mesh.to_yaml());
        }
    }
}
