//! Smaller candidates of a mesh, for reducing a failing one to a minimal example: drop a
//! client namespace, a rule or VirtualService, a client, the gateway, a pod (each region
//! keeps one) or Service, any node of a stored object, or the health check. Only valid candidates are proposed,
//! smallest first.

use serde_json::Value;

use super::{FailoverMesh, HealthMode, SERVICE};
use crate::generated::prune::{without_each, without_each_node};
use crate::generated::{Generated, root_template, worth_trying};

impl FailoverMesh {
    /// Smaller meshes derived from this one, valid (CRD schema and Istio's rules), distinct,
    /// smallest first.
    pub fn shrink(&self) -> Vec<FailoverMesh> {
        let mut out = Vec::new();
        self.drop_namespaces(&mut out);
        out.extend(without_each(self, |m| &mut m.objects, |_| false));
        if self.clients.len() > 1 {
            out.extend(without_each(self, |m| &mut m.clients, |_| false));
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
        let stays = |object: &Value| {
            let last_pod = object["kind"] == "Pod" && pods_in(&region_of(object)) == 1;
            let main_service = object["kind"] == "Service" && object["metadata"]["name"] == SERVICE;
            last_pod || main_service || object["kind"] == "Gateway"
        };
        out.extend(without_each(self, |m| &mut m.world, stays));
        out.extend(without_each_node(self, |m| &mut m.objects, |_| true));
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
        let valid = |m: &FailoverMesh| m.invalid().is_none();
        let rest = |m: &FailoverMesh| format!("{:?}{:?}{:?}", m.clients, m.gateway, m.health);
        worth_trying(self, out, valid, rest)
    }

    /// A client namespace other than the alert's and the root, with everything in it.
    fn drop_namespaces(&self, out: &mut Vec<FailoverMesh>) {
        let keep = [Self::alert_template(), root_template()];
        for namespace in &self.namespaces {
            if keep.contains(namespace) {
                continue;
            }
            let smaller = self.without_namespace(namespace);
            if !smaller.clients.is_empty() {
                out.push(smaller);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generated::assert_shrinks_to_a_floor;

    #[test]
    fn candidates_are_smaller_valid_and_reach_a_floor() {
        let valid = |m: &FailoverMesh| m.invalid().is_none();
        assert_shrinks_to_a_floor(FailoverMesh::generate, valid, |m| m.objects.is_empty());
    }
}
