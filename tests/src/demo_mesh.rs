//! The demo mesh (`local/demo-mesh.yaml`): what `scripts/demo`, `scripts/local-cluster`
//! and the tests that feed the sample events apply.

use serde::Deserialize as _;
use serde_json::Value;

use crate::events::workspace_root;

/// Every object of the demo mesh, in the file's order (namespaces first).
pub fn demo_mesh_objects() -> Vec<Value> {
    let path = workspace_root().join("local/demo-mesh.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("read {}: {err}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).expect("a demo mesh object"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_mesh_holds_the_shop_and_its_routing() {
        let objects = demo_mesh_objects();
        let kinds = |kind: &str| objects.iter().filter(|o| o["kind"] == kind).count();
        assert_eq!(kinds("Namespace"), 2);
        assert!(kinds("Deployment") >= 4);
        assert!(kinds("VirtualService") >= 1 && kinds("DestinationRule") >= 1);
    }
}
