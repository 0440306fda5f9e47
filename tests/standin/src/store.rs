//! The in-memory object store, the request log and the fault table.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::faults::{FaultPlan, FaultSlot, RecordedRequest};
use crate::resources::ResourceDef;

/// (qualified resource, namespace or "", name)
pub(crate) type Key = (String, String, String);
/// A field path (object keys; arrays are leaves).
pub(crate) type FieldPath = Vec<String>;
/// Field ownership for server-side apply: path -> manager -> "set by apply".
pub(crate) type Owners = BTreeMap<FieldPath, BTreeMap<String, bool>>;

/// One stored object.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub obj: Value,
    pub owners: Owners,
}

/// Everything behind the one mutex.
#[derive(Debug)]
pub(crate) struct State {
    pub objects: BTreeMap<Key, Entry>,
    /// Last resourceVersion handed out (global, like etcd's revision).
    pub rv: u64,
    pub settle: bool,
    pub faults: Vec<FaultSlot>,
    pub requests: Vec<(u64, RecordedRequest)>,
    pub req_seq: u64,
    rng: u64,
}

impl Default for State {
    fn default() -> Self {
        let seed = jiff::Timestamp::now().as_nanosecond() as u64 ^ u64::from(std::process::id());
        State {
            objects: BTreeMap::new(),
            rv: 1000,
            settle: true,
            faults: Vec::new(),
            requests: Vec::new(),
            req_seq: 0,
            rng: seed | 1,
        }
    }
}

pub(crate) fn key(def: &ResourceDef, ns: Option<&str>, name: &str) -> Key {
    (
        def.qualified_resource(),
        if def.namespaced {
            ns.unwrap_or_default().to_string()
        } else {
            String::new()
        },
        name.to_string(),
    )
}

pub(crate) fn ns_key(ns: &str) -> Key {
    ("namespaces".into(), String::new(), ns.to_string())
}

pub(crate) fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

impl State {
    pub(crate) fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn next_rand(&mut self) -> u64 {
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(crate) fn new_uid(&mut self) -> String {
        let a = self.next_rand();
        let b = self.next_rand();
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            0x8000 | ((b >> 48) & 0x3fff),
            b & 0xffff_ffff_ffff
        )
    }

    /// 5 characters from the alphabet the API server uses for `generateName`.
    pub(crate) fn name_suffix(&mut self) -> String {
        const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        let mut r = self.next_rand();
        (0..5)
            .map(|_| {
                let c = ALPHA[(r % ALPHA.len() as u64) as usize] as char;
                r /= ALPHA.len() as u64;
                c
            })
            .collect()
    }

    pub(crate) fn namespace_exists(&self, ns: &str) -> bool {
        self.objects.contains_key(&ns_key(ns))
    }

    /// Create namespace `ns` (active) if it is missing.
    pub(crate) fn ensure_namespace(&mut self, ns: &str) {
        if self.namespace_exists(ns) {
            return;
        }
        let rv = self.next_rv();
        let uid = self.new_uid();
        let obj = json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": ns,
                "uid": uid,
                "resourceVersion": rv.to_string(),
                "creationTimestamp": now_rfc3339(),
                "labels": {"kubernetes.io/metadata.name": ns},
            },
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        });
        self.objects.insert(
            ns_key(ns),
            Entry {
                obj,
                owners: Owners::new(),
            },
        );
    }

    /// Give the stored object a new resourceVersion (a concurrent writer's effect).
    pub(crate) fn bump(&mut self, key: &Key) -> bool {
        if !self.objects.contains_key(key) {
            return false;
        }
        let rv = self.next_rv();
        if let Some(e) = self.objects.get_mut(key) {
            e.obj["metadata"]["resourceVersion"] = Value::String(rv.to_string());
        }
        true
    }

    /// Decide which faults apply to this request (and count them).
    pub(crate) fn plan_faults(&mut self, method: &str, path: &str) -> FaultPlan {
        crate::faults::plan_faults(&mut self.faults, method, path)
    }

    pub(crate) fn record(&mut self, r: RecordedRequest) -> u64 {
        self.req_seq += 1;
        self.requests.push((self.req_seq, r));
        self.req_seq
    }

    pub(crate) fn finish_record(&mut self, id: u64, status: u16) {
        if let Some((_, r)) = self.requests.iter_mut().rev().find(|(i, _)| *i == id) {
            r.status = status;
        }
    }

    /// All objects of one namespace's children (for namespace deletion).
    pub(crate) fn delete_namespace_contents(&mut self, ns: &str) {
        let doomed: BTreeSet<Key> = self.objects.keys().filter(|k| k.1 == ns).cloned().collect();
        for k in doomed {
            self.objects.remove(&k);
        }
    }
}
