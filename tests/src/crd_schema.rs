//! Offline validation of Istio objects against the `openAPIV3Schema` of their CRDs
//! (`deploy/crds/`), for generated meshes before they reach a server and for shrinking them.
//! The `jsonschema` crate judges, with two readings of a CRD schema made explicit: a field the
//! schema does not list is an error (the real server, asked with `fieldValidation=Strict` as
//! the functions ask, rejects it; by default it drops it silently), and `nullable: true`
//! admits `null`. CEL rules (`x-kubernetes-validations`) are the real server's alone: every
//! generated mesh is created on it.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde_json::{Value, json};

const CRDS: [&str; 3] = [
    include_str!("../../deploy/crds/virtualservices.yaml"),
    include_str!("../../deploy/crds/destinationrules.yaml"),
    include_str!("../../deploy/crds/serviceentries.yaml"),
];

/// (kind, version) -> the validator of that version's schema.
static VALIDATORS: LazyLock<HashMap<(String, String), jsonschema::Validator>> =
    LazyLock::new(|| {
        let mut out = HashMap::new();
        for text in CRDS {
            let crd: Value = serde_yaml::from_str(text).expect("a vendored CRD parses");
            let kind = crd["spec"]["names"]["kind"].as_str().expect("CRD kind");
            for version in crd["spec"]["versions"].as_array().expect("CRD versions") {
                let mut schema = version["schema"]["openAPIV3Schema"].clone();
                as_the_server_reads_it(&mut schema);
                let validator = jsonschema::draft4::new(&schema).expect("a CRD schema compiles");
                let name = version["name"].as_str().expect("version name");
                out.insert((kind.to_owned(), name.to_owned()), validator);
            }
        }
        out
    });

/// Unlisted fields become errors; `nullable` admits `null`.
fn as_the_server_reads_it(schema: &mut Value) {
    let Some(map) = schema.as_object_mut() else {
        return;
    };
    let preserves = map.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
    if map.contains_key("properties") && !map.contains_key("additionalProperties") && !preserves {
        map.insert("additionalProperties".into(), json!(false));
    }
    if map.get("nullable") == Some(&json!(true))
        && let Some(Value::String(kind)) = map.get("type").cloned()
    {
        map.insert("type".into(), json!([kind, "null"]));
    }
    for child in map.values_mut() {
        match child {
            Value::Array(items) => items.iter_mut().for_each(as_the_server_reads_it),
            Value::Object(_) => as_the_server_reads_it(child),
            _ => {}
        }
    }
}

/// Why `object` (a `kind` at `version`) breaks its CRD schema, one line per error; `Err`
/// too when the kind or version is not one the vendored CRDs serve.
pub fn validate_istio(kind: &str, version: &str, object: &Value) -> Result<(), Vec<String>> {
    let Some(validator) = VALIDATORS.get(&(kind.to_owned(), version.to_owned())) else {
        return Err(vec![format!(
            "no CRD serves {kind} at {version} (deploy/crds/: VirtualService, DestinationRule, ServiceEntry)"
        )]);
    };
    // The server checks metadata, apiVersion and kind itself; the schema covers the rest.
    let mut body = object.clone();
    if let Some(map) = body.as_object_mut() {
        for key in ["apiVersion", "kind", "metadata"] {
            map.remove(key);
        }
    }
    let errors: Vec<String> = validator
        .iter_errors(&body)
        .map(|error| format!("{}: {error}", error.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(traffic_policy: Value) -> Value {
        json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
               "metadata": {"name": "r", "namespace": "n"},
               "spec": {"host": "svc", "trafficPolicy": traffic_policy}})
    }

    #[test]
    fn a_valid_rule_passes() {
        let ok = rule(json!({"loadBalancer": {"simple": "LEAST_REQUEST",
            "localityLbSetting": {"enabled": null}},
            "outlierDetection": {"consecutive5xxErrors": 5}}));
        assert_eq!(validate_istio("DestinationRule", "v1", &ok), Ok(()));
    }

    #[test]
    fn unknown_fields_wrong_types_and_values_outside_an_enum_are_named() {
        for (policy, field) in [
            (
                json!({"outlierDetection": {"consecutiveErrors5xx": 5}}),
                "consecutiveErrors5xx",
            ),
            (
                json!({"outlierDetection": {"consecutive5xxErrors": "five"}}),
                "consecutive5xxErrors",
            ),
            (json!({"loadBalancer": {"simple": "FASTEST"}}), "simple"),
        ] {
            let errors = validate_istio("DestinationRule", "v1", &rule(policy.clone()))
                .expect_err("invalid");
            assert!(
                errors.iter().any(|e| e.contains(field)),
                "{policy}: {errors:?}"
            );
        }
    }

    #[test]
    fn a_kind_no_crd_serves_is_an_error() {
        assert!(validate_istio("Gateway", "v1", &json!({})).is_err());
    }
}
