//! A minimal YAML writer for JSON values (block style), so a failing mesh prints as the
//! YAML a person would `kubectl apply`.
//!
//! A copy of `mesh_gen`'s private writer (kept apart so the two generators can change
//! independently).

use serde_json::Value;

/// `value` as a YAML document body (block style, two-space indent).
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value, 0, Context::Top);
    out
}

#[derive(Clone, Copy, PartialEq)]
enum Context {
    Top,
    MapValue,
    ListItem,
}

fn write_value(out: &mut String, value: &Value, indent: usize, context: Context) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            let mut first = true;
            for (key, item) in map {
                if !(first && context == Context::ListItem) {
                    if context != Context::Top || !first {
                        out.push('\n');
                    }
                    out.push_str(&" ".repeat(indent));
                }
                first = false;
                out.push_str(&scalar_string(key));
                out.push(':');
                write_child(out, item, indent + 2);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for (i, item) in items.iter().enumerate() {
                if context != Context::Top || i > 0 {
                    out.push('\n');
                }
                out.push_str(&" ".repeat(indent));
                out.push_str("- ");
                match item {
                    Value::Object(m) if !m.is_empty() => {
                        write_value(out, item, indent + 2, Context::ListItem);
                    }
                    Value::Array(a) if !a.is_empty() => {
                        write_value(out, item, indent + 2, Context::MapValue);
                    }
                    _ => out.push_str(&scalar(item)),
                }
            }
        }
        _ => out.push_str(&scalar(value)),
    }
}

fn write_child(out: &mut String, value: &Value, indent: usize) {
    match value {
        Value::Object(m) if !m.is_empty() => write_value(out, value, indent, Context::MapValue),
        // Lists under a key are written at the key's indentation, as kubectl does.
        Value::Array(a) if !a.is_empty() => {
            write_value(out, value, indent - 2, Context::MapValue);
        }
        _ => {
            out.push(' ');
            out.push_str(&scalar(value));
        }
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => scalar_string(s),
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
        other => other.to_string(),
    }
}

/// A string plain when YAML reads it back as the same string, else double-quoted (JSON
/// string syntax is valid YAML).
fn scalar_string(s: &str) -> String {
    let plain = s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "y" | "n" | "null"
        );
    if plain {
        s.to_owned()
    } else {
        Value::String(s.to_owned()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_maps_and_lists() {
        let doc = json!({"kind": "DestinationRule", "metadata": {"name": "db", "labels": {}},
            "spec": {"exportTo": ["."], "subsets": [{"name": "a", "labels": {"role": "x"}}],
                     "trafficPolicy": {"connectionPool": {"tcp": {"connectTimeout": "2s",
                                                                  "maxConnections": 5}}}}});
        assert_eq!(
            to_yaml(&doc),
            "kind: DestinationRule\nmetadata:\n  labels: {}\n  name: db\nspec:\n  exportTo:\n  - \".\"\n  subsets:\n  - labels:\n      role: x\n    name: a\n  trafficPolicy:\n    connectionPool:\n      tcp:\n        connectTimeout: \"2s\"\n        maxConnections: 5"
        );
    }
}
