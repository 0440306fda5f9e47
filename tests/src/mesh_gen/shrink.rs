//! Smaller candidates of a mesh, for reducing a failing one to a minimal example: drop a
//! client namespace, a rule, a client, a pod or endpoint, and any node of a rule (a subset, a
//! port-level entry, a field, a label). Only valid candidates are proposed, smallest first.

use serde_json::Value;

use super::{ClientSpec, Database, GeneratedMesh};
use crate::generated::prune::{normalize, remove, without_each, without_each_node};
use crate::generated::{Generated, root_template, worth_trying};

impl GeneratedMesh {
    /// Smaller meshes derived from this one, valid (CRD schema and Istio's rules), distinct,
    /// smallest first (the largest reductions are tried first).
    pub fn shrink(&self) -> Vec<GeneratedMesh> {
        let mut out = Vec::new();
        self.drop_namespaces(&mut out);
        let is_rule = |o: &Value| o["kind"] == "DestinationRule";
        out.extend(without_each(self, |m| &mut m.objects, |o| !is_rule(o)));
        self.drop_clients(&mut out);
        self.drop_world_objects(&mut out);
        self.drop_endpoints(&mut out);
        out.extend(without_each_node(self, |m| &mut m.objects, is_rule));
        let valid = |m: &GeneratedMesh| m.invalid().is_none();
        worth_trying(self, out, valid, |m| format!("{:?}", m.clients))
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
            let mut smaller = self.without_namespace(namespace);
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
        let last_caller = |c: &ClientSpec| caller(c) && callers == 1;
        out.extend(without_each(self, |m| &mut m.clients, last_caller));
    }

    /// A pod or a client's Service the oracle alone sees (a database keeps one pod).
    fn drop_world_objects(&self, out: &mut Vec<GeneratedMesh>) {
        let db_pods = self.world.iter().filter(|o| is_db_pod(o)).count();
        let last_db_pod = |o: &Value| is_db_pod(o) && db_pods == 1;
        out.extend(without_each(self, |m| &mut m.world, last_db_pod));
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
    use crate::generated::assert_shrinks_to_a_floor;

    #[test]
    fn candidates_are_smaller_valid_and_reach_a_floor() {
        let valid = |m: &GeneratedMesh| m.invalid().is_none();
        assert_shrinks_to_a_floor(GeneratedMesh::generate, valid, |m| m.rules().count() == 0);
    }
}
