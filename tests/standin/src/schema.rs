//! Structural-schema pruning and validation of Istio objects against the
//! `openAPIV3Schema` of the Istio CRDs (embedded from `deploy/crds/`), following the
//! API server's CRD handling (`apiextensions-apiserver` + `kube-openapi` validate):
//!
//! * decoding prunes unknown fields (not listed in `properties`, not under
//!   `additionalProperties` or `x-kubernetes-preserve-unknown-fields`) and drops
//!   `null` values of non-`nullable` fields;
//! * validation checks `type`, `format` (int32/uint32/int64 bounds, date-time, byte),
//!   `enum`, `required`, `properties`, `additionalProperties`, `items`,
//!   `minimum`/`maximum` (+ exclusive), `minLength`/`maxLength`, `minItems`/`maxItems`,
//!   `uniqueItems`, `minProperties`/`maxProperties`, `pattern`, `allOf`/`anyOf`/`oneOf`/`not`,
//!   `nullable`, `x-kubernetes-int-or-string`, `x-kubernetes-preserve-unknown-fields`.
//!
//! NOT evaluated: `x-kubernetes-validations` (CEL rules). They need a CEL
//! interpreter; the stand-in skips them, so an object that only breaks a CEL rule
//! is accepted here but rejected by a real API server.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use serde_json::{Map, Value};

use crate::status::Cause;

const CRD_SOURCES: &[&str] = &[
    include_str!("../../../deploy/crds/virtualservices.yaml"),
    include_str!("../../../deploy/crds/destinationrules.yaml"),
    include_str!("../../../deploy/crds/serviceentries.yaml"),
];

/// (kind, version) -> openAPIV3Schema
static SCHEMAS: LazyLock<HashMap<(String, String), Value>> = LazyLock::new(|| {
    let mut out = HashMap::new();
    for src in CRD_SOURCES {
        let crd: Value = serde_yaml::from_str(src).expect("embedded Istio CRD YAML parses");
        let kind = crd["spec"]["names"]["kind"]
            .as_str()
            .expect("CRD has spec.names.kind")
            .to_string();
        for v in crd["spec"]["versions"]
            .as_array()
            .expect("CRD has spec.versions")
        {
            let name = v["name"]
                .as_str()
                .expect("CRD version has a name")
                .to_string();
            out.insert((kind.clone(), name), v["schema"]["openAPIV3Schema"].clone());
        }
    }
    out
});

static REGEX_CACHE: LazyLock<Mutex<HashMap<String, Option<regex::Regex>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The `openAPIV3Schema` of an Istio kind at a served version.
pub(crate) fn schema_for(kind: &str, version: &str) -> Option<&'static Value> {
    SCHEMAS.get(&(kind.to_string(), version.to_string()))
}

/// Fields of `ObjectMeta` kept by the API server; anything else under `metadata` is pruned.
const OBJECT_META_FIELDS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

/// Outcome of decoding + validating an object.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Paths of pruned unknown fields (`spec.foo`).
    pub unknown: Vec<String>,
    /// Validation failures.
    pub causes: Vec<Cause>,
}

/// Prune `obj` in place like the API server's decoder and validate it against the
/// schema of `kind`/`version`. Returns `None` when no schema is known.
pub(crate) fn prune_and_validate(kind: &str, version: &str, obj: &mut Value) -> Option<Outcome> {
    let schema = schema_for(kind, version)?;
    let mut out = Outcome::default();
    let Some(map) = obj.as_object_mut() else {
        out.causes.push(Cause::new(
            "FieldValueTypeInvalid",
            "",
            format!(
                "Invalid value: {}: body must be of type object",
                type_name(obj)
            ),
        ));
        return Some(out);
    };
    // apiVersion/kind/metadata are handled by the generic machinery, not the CRD schema.
    let api_version = map.remove("apiVersion");
    let kind_v = map.remove("kind");
    let mut metadata = map.remove("metadata");
    if let Some(Value::Object(meta)) = metadata.as_mut() {
        let keys: Vec<String> = meta.keys().cloned().collect();
        for k in keys {
            if !OBJECT_META_FIELDS.contains(&k.as_str()) {
                meta.remove(&k);
                out.unknown.push(format!("metadata.{k}"));
            }
        }
    }
    prune(schema, obj, "", &mut out.unknown);
    validate(schema, obj, "", &mut out.causes);
    if let Some(map) = obj.as_object_mut() {
        if let Some(v) = api_version {
            map.insert("apiVersion".into(), v);
        }
        if let Some(v) = kind_v {
            map.insert("kind".into(), v);
        }
        if let Some(v) = metadata {
            map.insert("metadata".into(), v);
        }
    }
    Some(out)
}

/// Validate an Istio object (`VirtualService`, `DestinationRule`, `ServiceEntry`) against
/// the served version's CRD schema, the way the API server would on a write.
///
/// Unknown fields count as errors here (`unknown field "spec.foo"`): a real server would
/// silently drop them (or reject them with `fieldValidation=Strict`), and either way the
/// writer did not get what it sent. CEL rules (`x-kubernetes-validations`) are not
/// evaluated. Each error is one line, `field: message`, as in the API server's `Status`.
pub fn validate_istio(
    kind: &str,
    version: &str,
    obj: &serde_json::Value,
) -> Result<(), Vec<String>> {
    let mut copy = obj.clone();
    let Some(outcome) = prune_and_validate(kind, version, &mut copy) else {
        return Err(vec![format!(
            "no schema for kind {kind:?} at version {version:?} (known: VirtualService, DestinationRule, ServiceEntry at v1, v1beta1, v1alpha3)"
        )]);
    };
    let mut errs: Vec<String> = outcome
        .unknown
        .iter()
        .map(|p| format!("unknown field \"{p}\""))
        .collect();
    errs.extend(outcome.causes.iter().map(Cause::line));
    if errs.is_empty() { Ok(()) } else { Err(errs) }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn is_true(s: &Value, key: &str) -> bool {
    s.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn prune(schema: &Value, v: &mut Value, path: &str, unknown: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            let preserve = is_true(schema, "x-kubernetes-preserve-unknown-fields");
            let props = schema.get("properties").and_then(Value::as_object);
            let addl = schema.get("additionalProperties");
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                let child_path = join(path, &k);
                let child_schema = props
                    .and_then(|p| p.get(&k))
                    .or_else(|| addl.filter(|a| a.is_object()));
                match child_schema {
                    Some(cs) => {
                        let is_null = map.get(&k).is_some_and(Value::is_null);
                        if is_null && !is_true(cs, "nullable") {
                            map.remove(&k);
                            continue;
                        }
                        if let Some(child) = map.get_mut(&k) {
                            prune(cs, child, &child_path, unknown);
                        }
                    }
                    None => {
                        let keep = preserve || addl.and_then(Value::as_bool).unwrap_or(false);
                        if !keep {
                            map.remove(&k);
                            unknown.push(child_path);
                        }
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(is) = schema.get("items") {
                for (i, it) in items.iter_mut().enumerate() {
                    prune(is, it, &format!("{path}[{i}]"), unknown);
                }
            }
        }
        _ => {}
    }
}

/// JSON type name as the API server reports it.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Value rendering of `field.Invalid` (`%#v`-ish): strings quoted, numbers bare.
pub(crate) fn render(v: &Value) -> String {
    match v {
        Value::String(s) => serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}")),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".into(),
        Value::Array(_) => "\"array\"".into(),
        Value::Object(_) => "\"object\"".into(),
    }
}

fn type_matches(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        _ => true,
    }
}

fn invalid(errs: &mut Vec<Cause>, path: &str, v: &Value, what: &str) {
    errs.push(Cause::new(
        "FieldValueInvalid",
        path,
        format!(
            "Invalid value: {}: {} in body {}",
            render(v),
            display_path(path),
            what
        ),
    ));
}

fn display_path(path: &str) -> &str {
    if path.is_empty() { "<root>" } else { path }
}

fn regex_ok(pattern: &str, s: &str) -> bool {
    let mut cache = REGEX_CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let re = cache
        .entry(pattern.to_string())
        .or_insert_with(|| regex::Regex::new(pattern).ok());
    // An uncompilable pattern cannot be enforced; accept rather than fail every write.
    re.as_ref().is_none_or(|re| re.is_match(s))
}

fn valid_base64(s: &str) -> bool {
    let t = s.trim_end_matches('=');
    s.len().is_multiple_of(4)
        && s.len() - t.len() <= 2
        && t.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
}

/// Validate `v` against `schema` at `path`; appends causes.
fn validate(schema: &Value, v: &Value, path: &str, errs: &mut Vec<Cause>) {
    let Some(s) = schema.as_object() else { return };
    let int_or_string = is_true(schema, "x-kubernetes-int-or-string");
    if v.is_null() {
        if is_true(schema, "nullable") {
            return;
        }
        if let Some(t) = s.get("type").and_then(Value::as_str) {
            errs.push(type_error(path, t, v));
            return;
        }
    }
    if int_or_string {
        if !(v.is_string() || v.is_i64() || v.is_u64()) {
            errs.push(type_error(path, "integer,string", v));
            return;
        }
    } else if let Some(t) = s.get("type").and_then(Value::as_str)
        && !type_matches(t, v)
    {
        errs.push(type_error(path, t, v));
        return;
    }

    if let Some(allowed) = s.get("enum").and_then(Value::as_array)
        && !allowed.contains(v)
    {
        let list = allowed.iter().map(render).collect::<Vec<_>>().join(", ");
        errs.push(Cause::new(
            "FieldValueNotSupported",
            path,
            format!(
                "Unsupported value: {}: supported values: {}",
                render(v),
                list
            ),
        ));
    }

    match v {
        Value::String(st) => {
            let len = st.chars().count() as u64;
            if let Some(max) = s.get("maxLength").and_then(Value::as_u64)
                && len > max
            {
                errs.push(Cause::new(
                    "FieldValueTooLong",
                    path,
                    format!("Too long: may not be more than {max} bytes"),
                ));
            }
            if let Some(min) = s.get("minLength").and_then(Value::as_u64)
                && len < min
            {
                invalid(
                    errs,
                    path,
                    v,
                    &format!("should be at least {min} chars long"),
                );
            }
            if let Some(p) = s.get("pattern").and_then(Value::as_str)
                && !regex_ok(p, st)
            {
                invalid(errs, path, v, &format!("should match '{p}'"));
            }
            match s.get("format").and_then(Value::as_str) {
                Some("date-time") if st.parse::<jiff::Timestamp>().is_err() => {
                    invalid(
                        errs,
                        path,
                        v,
                        &format!("must be of type date-time: {}", render(v)),
                    );
                }
                Some("byte") if !valid_base64(st) => {
                    invalid(
                        errs,
                        path,
                        v,
                        &format!("must be of type byte: {}", render(v)),
                    );
                }
                _ => {}
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            let (fmin, fmax) = match s.get("format").and_then(Value::as_str) {
                Some("int32") => (Some(f64::from(i32::MIN)), Some(f64::from(i32::MAX))),
                Some("uint32") => (Some(0.0), Some(f64::from(u32::MAX))),
                _ => (None, None),
            };
            let max = s.get("maximum").and_then(Value::as_f64).or(fmax);
            let min = s.get("minimum").and_then(Value::as_f64).or(fmin);
            let fmt = |b: f64| {
                if b.fract() == 0.0 && b.abs() < 1e15 {
                    format!("{}", b as i64)
                } else {
                    b.to_string()
                }
            };
            if let Some(max) = max {
                if is_true(schema, "exclusiveMaximum") {
                    if x >= max {
                        invalid(errs, path, v, &format!("should be less than {}", fmt(max)));
                    }
                } else if x > max {
                    invalid(
                        errs,
                        path,
                        v,
                        &format!("should be less than or equal to {}", fmt(max)),
                    );
                }
            }
            if let Some(min) = min {
                if is_true(schema, "exclusiveMinimum") {
                    if x <= min {
                        invalid(
                            errs,
                            path,
                            v,
                            &format!("should be greater than {}", fmt(min)),
                        );
                    }
                } else if x < min {
                    invalid(
                        errs,
                        path,
                        v,
                        &format!("should be greater than or equal to {}", fmt(min)),
                    );
                }
            }
        }
        Value::Array(items) => {
            let n = items.len() as u64;
            if let Some(max) = s.get("maxItems").and_then(Value::as_u64)
                && n > max
            {
                errs.push(Cause::new(
                    "FieldValueTooMany",
                    path,
                    format!("Too many: {n}: must have at most {max} items"),
                ));
            }
            if let Some(min) = s.get("minItems").and_then(Value::as_u64)
                && n < min
            {
                invalid(
                    errs,
                    path,
                    &Value::from(n),
                    &format!("should have at least {min} items"),
                );
            }
            if is_true(schema, "uniqueItems") {
                for (i, a) in items.iter().enumerate() {
                    if items[..i].contains(a) {
                        errs.push(Cause::new(
                            "FieldValueDuplicate",
                            &format!("{path}[{i}]"),
                            format!("Duplicate value: {}", render(a)),
                        ));
                    }
                }
            }
            if let Some(is) = s.get("items") {
                for (i, it) in items.iter().enumerate() {
                    validate(is, it, &format!("{path}[{i}]"), errs);
                }
            }
        }
        Value::Object(map) => validate_object(s, map, path, errs),
        _ => {}
    }

    if let Some(all) = s.get("allOf").and_then(Value::as_array) {
        for sub in all {
            validate(sub, v, path, errs);
        }
    }
    if let Some(any) = s.get("anyOf").and_then(Value::as_array)
        && !any.iter().any(|sub| passes(sub, v, path))
    {
        invalid(errs, path, v, "must validate at least one schema (anyOf)");
    }
    if let Some(one) = s.get("oneOf").and_then(Value::as_array) {
        let n = one.iter().filter(|sub| passes(sub, v, path)).count();
        if n != 1 {
            let extra = if n > 1 {
                format!(". Found {n} valid alternatives")
            } else {
                String::new()
            };
            invalid(
                errs,
                path,
                v,
                &format!("must validate one and only one schema (oneOf){extra}"),
            );
        }
    }
    if let Some(not) = s.get("not")
        && passes(not, v, path)
    {
        invalid(errs, path, v, "must not validate the schema (not)");
    }
    // `x-kubernetes-validations` (CEL) is deliberately not evaluated: see the module docs.
}

fn validate_object(
    s: &Map<String, Value>,
    map: &Map<String, Value>,
    path: &str,
    errs: &mut Vec<Cause>,
) {
    if let Some(req) = s.get("required").and_then(Value::as_array) {
        for r in req.iter().filter_map(Value::as_str) {
            if !map.contains_key(r) {
                errs.push(Cause::new(
                    "FieldValueRequired",
                    &join(path, r),
                    "Required value",
                ));
            }
        }
    }
    let n = map.len() as u64;
    if let Some(max) = s.get("maxProperties").and_then(Value::as_u64)
        && n > max
    {
        errs.push(Cause::new(
            "FieldValueTooMany",
            path,
            format!("Too many: {n}: must have at most {max} items"),
        ));
    }
    if let Some(min) = s.get("minProperties").and_then(Value::as_u64)
        && n < min
    {
        invalid(
            errs,
            path,
            &Value::from(n),
            &format!("should have at least {min} properties"),
        );
    }
    let props = s.get("properties").and_then(Value::as_object);
    let addl = s.get("additionalProperties").filter(|a| a.is_object());
    for (k, child) in map {
        let cs = props.and_then(|p| p.get(k)).or(addl);
        if let Some(cs) = cs {
            validate(cs, child, &join(path, k), errs);
        }
    }
}

fn passes(schema: &Value, v: &Value, path: &str) -> bool {
    let mut e = Vec::new();
    validate(schema, v, path, &mut e);
    e.is_empty()
}

fn type_error(path: &str, t: &str, v: &Value) -> Cause {
    let tn = type_name(v);
    Cause::new(
        "FieldValueTypeInvalid",
        path,
        format!(
            "Invalid value: \"{tn}\": {} in body must be of type {t}: \"{tn}\"",
            display_path(path)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vs(spec: Value) -> Value {
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
               "metadata": {"name": "checkout", "namespace": "shop"}, "spec": spec})
    }

    #[test]
    fn all_versions_load() {
        for k in ["VirtualService", "DestinationRule", "ServiceEntry"] {
            for v in ["v1", "v1beta1", "v1alpha3"] {
                assert!(schema_for(k, v).is_some(), "{k} {v}");
            }
        }
    }

    #[test]
    fn valid_virtual_service_passes() {
        let o = vs(json!({"hosts": ["checkout"], "http": [{"route": [
            {"destination": {"host": "checkout", "subset": "v1"}, "weight": 90},
            {"destination": {"host": "checkout", "subset": "v2", "port": {"number": 8080}}, "weight": 10}],
            "timeout": "5s", "retries": {"attempts": 3, "perTryTimeout": "2s"}}]}));
        assert_eq!(validate_istio("VirtualService", "v1", &o), Ok(()));
        assert_eq!(validate_istio("VirtualService", "v1beta1", &o), Ok(()));
    }

    #[test]
    fn valid_destination_rule_passes() {
        let o = json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "orders", "namespace": "shop"},
            "spec": {"host": "orders.shop.svc.cluster.local",
                "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"},
                    "connectionPool": {"tcp": {"maxConnections": 100}, "http": {"http1MaxPendingRequests": 10}},
                    "outlierDetection": {"consecutive5xxErrors": 5, "interval": "10s", "baseEjectionTime": "30s", "maxEjectionPercent": 100}},
                "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}});
        assert_eq!(validate_istio("DestinationRule", "v1", &o), Ok(()));
    }

    #[test]
    fn wrong_type_fails_with_api_server_message() {
        let o = vs(json!({"hosts": ["checkout"], "http": [{"route": [
            {"destination": {"host": "checkout"}, "weight": "string"}]}]}));
        let errs =
            validate_istio("VirtualService", "v1", &o).expect_err("weight must be an integer");
        assert_eq!(
            errs,
            vec![
                "spec.http[0].route[0].weight: Invalid value: \"string\": spec.http[0].route[0].weight in body must be of type integer: \"string\""
                    .to_string()
            ]
        );
    }

    #[test]
    fn int32_bounds_and_required() {
        let o = vs(json!({"http": [{"route": [{"weight": 4_000_000_000_u64}]}]}));
        let errs = validate_istio("VirtualService", "v1", &o).expect_err("invalid");
        assert!(
            errs.iter()
                .any(|e| e.contains("should be less than or equal to 2147483647")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e == "spec.http[0].route[0].destination: Required value"),
            "{errs:?}"
        );
    }

    #[test]
    fn bad_enum_fails() {
        let o = json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "orders"}, "spec": {"host": "orders", "trafficPolicy": {"tls": {"mode": "SOMETIMES"}}}});
        let errs = validate_istio("DestinationRule", "v1", &o).expect_err("bad enum");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].starts_with("spec.trafficPolicy.tls.mode: Unsupported value: \"SOMETIMES\": supported values: \"DISABLE\""), "{errs:?}");
    }

    #[test]
    fn unknown_fields_fail_and_are_pruned() {
        let mut o = vs(json!({"hosts": ["a"], "foo": 1, "http": [{"bar": true}]}));
        let errs = validate_istio("VirtualService", "v1", &o).expect_err("unknown fields");
        assert_eq!(
            errs,
            vec![
                "unknown field \"spec.foo\"".to_string(),
                "unknown field \"spec.http[0].bar\"".to_string()
            ]
        );
        let out = prune_and_validate("VirtualService", "v1", &mut o).expect("schema");
        assert!(out.causes.is_empty());
        assert_eq!(o["spec"], json!({"hosts": ["a"], "http": [{}]}));
    }

    #[test]
    fn one_of_mutually_exclusive_fields() {
        // StringMatch: exact / prefix / regex are mutually exclusive (oneOf).
        let o = vs(
            json!({"hosts": ["a"], "http": [{"match": [{"uri": {"exact": "/a", "prefix": "/b"}}],
            "route": [{"destination": {"host": "a"}}]}]}),
        );
        let errs = validate_istio("VirtualService", "v1", &o).expect_err("oneOf");
        assert!(
            errs.iter()
                .any(|e| e.contains("spec.http[0].match[0].uri") && e.contains("oneOf")),
            "{errs:?}"
        );
        let ok = vs(
            json!({"hosts": ["a"], "http": [{"match": [{"uri": {"prefix": "/b"}}],
            "route": [{"destination": {"host": "a"}}]}]}),
        );
        assert_eq!(validate_istio("VirtualService", "v1", &ok), Ok(()));
    }

    #[test]
    fn int_or_string_and_unknown_kind() {
        let o = json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": "db"},
            "spec": {"hosts": ["db.example.com"], "ports": [{"number": 5432, "name": "tcp", "protocol": "TCP"}], "resolution": "DNS"}});
        assert_eq!(validate_istio("ServiceEntry", "v1", &o), Ok(()));
        assert!(validate_istio("Gateway", "v1", &o).is_err());
    }
}
