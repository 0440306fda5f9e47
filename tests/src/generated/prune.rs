//! Pruning a mesh for the shrinkers of the generated meshes: one item of a list at a time,
//! or a stored object node by node (what may go, removing it, and tidying up what a
//! removal left empty).

use serde_json::Value;

/// One smaller mesh per item of the list `items` picks out of `mesh`, without that item;
/// the items `keep` says must stay are not taken out.
pub fn without_each<M: Clone, T>(
    mesh: &M,
    items: impl Fn(&mut M) -> &mut Vec<T>,
    keep: impl Fn(&T) -> bool,
) -> Vec<M> {
    let mut probe = mesh.clone();
    let kept: Vec<bool> = items(&mut probe).iter().map(keep).collect();
    let going = kept.iter().enumerate().filter(|(_, kept)| !**kept);
    going
        .map(|(i, _)| {
            let mut smaller = mesh.clone();
            items(&mut smaller).remove(i);
            smaller
        })
        .collect()
}

/// One smaller mesh per [`removable`] node of each object in `objects` that `prunable`
/// picks, without that node and with what its removal left empty tidied away.
pub fn without_each_node<M: Clone>(
    mesh: &M,
    objects: impl Fn(&mut M) -> &mut Vec<Value>,
    prunable: impl Fn(&Value) -> bool,
) -> Vec<M> {
    let mut probe = mesh.clone();
    let pointers: Vec<(usize, String)> = objects(&mut probe)
        .iter()
        .enumerate()
        .filter(|(_, object)| prunable(object))
        .flat_map(|(i, object)| removable(object).into_iter().map(move |p| (i, p)))
        .collect();
    pointers
        .into_iter()
        .map(|(i, pointer)| {
            let mut smaller = mesh.clone();
            let object = &mut objects(&mut smaller)[i];
            remove(object, &pointer);
            normalize(object);
            smaller
        })
        .collect()
}

/// Every node of a stored object that can go: in `spec` all but a rule's `host` and subset
/// names, and its labels. JSON pointers, parents before children.
pub fn removable(object: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(labels) = object["metadata"]["labels"].as_object() {
        for key in labels.keys() {
            out.push(format!("/metadata/labels/{}", escape(key)));
        }
    }
    walk(&object["spec"], "/spec", &mut out);
    out.retain(|p| p != "/spec/host" && !is_subset_name(p));
    out
}

fn is_subset_name(pointer: &str) -> bool {
    let parts: Vec<&str> = pointer.split('/').collect();
    matches!(parts.as_slice(), ["", "spec", "subsets", _, "name"])
}

fn walk(value: &Value, at: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let pointer = format!("{at}/{}", escape(key));
                out.push(pointer.clone());
                walk(child, &pointer, out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                let pointer = format!("{at}/{i}");
                out.push(pointer.clone());
                walk(child, &pointer, out);
            }
        }
        _ => {}
    }
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Removes the node at `pointer` (an object key or an array element).
pub fn remove(value: &mut Value, pointer: &str) {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return;
    };
    let key = last.replace("~1", "/").replace("~0", "~");
    match value.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.remove(&key);
        }
        Some(Value::Array(items)) => {
            if let Ok(i) = key.parse::<usize>()
                && i < items.len()
            {
                items.remove(i);
            }
        }
        _ => {}
    }
}

/// Drops what a removal left empty and meaningless: empty objects and lists (but not an
/// empty `outlierDetection`, which turns ejection on with Envoy's defaults), and port-level
/// entries with nothing but their port.
pub fn normalize(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for child in map.values_mut() {
                normalize(child);
            }
            map.retain(|key, child| key == "outlierDetection" || !is_empty(child));
            if let Some(Value::Array(entries)) = map.get_mut("portLevelSettings") {
                entries.retain(|e| e.as_object().is_some_and(|m| m.len() > 1));
                if entries.is_empty() {
                    map.remove("portLevelSettings");
                }
            }
        }
        Value::Array(items) => {
            for child in items.iter_mut() {
                normalize(child);
            }
        }
        _ => {}
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}
