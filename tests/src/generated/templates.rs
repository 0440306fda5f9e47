//! What every generated mesh is: objects and names held as templates, with [`PREFIX`] where
//! the prefix of one run goes, so many meshes share one control plane. [`Generated`] fills
//! them in the same way for every generator, and says what the harness needs of a mesh.

use serde_json::{Value, json};

use crate::istio_oracle::{Client, CompileJob, World};
use crate::mesh_gen::{ClientSpec, yaml};

/// The name template every generated mesh writes its names with, filled in with its prefix.
pub const PREFIX: &str = "{P}";

/// `template` (any JSON) with [`PREFIX`] replaced by `prefix`, in keys and strings.
pub fn render(template: &Value, prefix: &str) -> Value {
    match template {
        Value::String(s) => Value::String(s.replace(PREFIX, prefix)),
        Value::Array(items) => Value::Array(items.iter().map(|v| render(v, prefix)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.replace(PREFIX, prefix), render(v, prefix)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The root configuration namespace standing in for `istio-system` (template).
pub fn root_template() -> String {
    format!("{PREFIX}-root")
}

/// Where in `objects` the object of `kind` named `namespace/name` is, if it is there.
pub fn find_object(objects: &[Value], kind: &str, namespace: &str, name: &str) -> Option<usize> {
    objects.iter().position(|o| {
        o["kind"] == kind
            && o["metadata"]["name"] == name
            && o["metadata"]["namespace"] == namespace
    })
}

/// A generated mesh, as the harness needs it. The fields every generator's mesh has
/// (`seed`, `prefix`, `namespaces`, `objects`, `world`) and its inherent `shrink`, `size`,
/// `alert_ns` and `to_yaml` are wired in by [`templated_mesh!`](crate::templated_mesh).
pub trait Generated: Clone + Send + Sync + 'static {
    /// The kinds the API server stores for it, in the order they are read back.
    const STORED: &'static [&'static str];
    /// The seed it was generated from (shrunk meshes keep it).
    fn seed(&self) -> u64;
    /// What [`PREFIX`] stands for in its templates.
    fn prefix(&self) -> &str;
    /// The same mesh under another name prefix (fresh namespaces and hosts).
    fn with_prefix(&self, prefix: &str) -> Self;
    /// Every namespace, in creation order (templates).
    fn namespace_templates(&self) -> &[String];
    /// The objects stored on the API server, in creation order (templates).
    fn object_templates(&self) -> &[Value];
    /// The objects only the oracle sees (templates).
    fn world_templates(&self) -> &[Value];
    /// Smaller meshes to try, for shrinking.
    fn smaller(&self) -> Vec<Self>;
    /// The same mesh without the namespace (template) `namespace`: its clients and every
    /// object in it go too.
    fn without_namespace(&self, namespace: &str) -> Self;
    /// How big it is (what shrinking reduces).
    fn weight(&self) -> usize;
    /// The alert's namespace (its action budgets live there).
    fn alert_namespace(&self) -> String;
    /// The mesh as YAML, to apply by hand.
    fn to_yaml(&self) -> String;
    /// Objects of Istio's world also stored, after the others, for the functions that
    /// read them: Services (their cluster IP left to the server) and Pods (made ready).
    fn also_stored(&self) -> Vec<Value> {
        Vec::new()
    }
    /// What to compile with the `stored` objects read back: the world, the client proxies,
    /// the root namespace.
    fn compile_job(&self, stored: &[Value]) -> CompileJob;

    /// `template` with the prefix filled in.
    fn render_str(&self, template: &str) -> String {
        template.replace(PREFIX, self.prefix())
    }

    /// `template` (any JSON) with the prefix filled in, in keys and strings.
    fn render(&self, template: &Value) -> Value {
        render(template, self.prefix())
    }

    /// Every namespace of the mesh, in creation order.
    fn namespace_names(&self) -> Vec<String> {
        let templates = self.namespace_templates();
        templates.iter().map(|n| self.render_str(n)).collect()
    }

    /// The mesh's root configuration namespace (`ISTIO_ROOT_NAMESPACE`).
    fn root_namespace(&self) -> String {
        self.render_str(&root_template())
    }

    /// The objects to create on the API server, in order.
    fn api_objects(&self) -> Vec<Value> {
        let templates = self.object_templates();
        templates.iter().map(|o| self.render(o)).collect()
    }

    /// The objects only the oracle sees.
    fn world_objects(&self) -> Vec<Value> {
        let templates = self.world_templates();
        templates.iter().map(|o| self.render(o)).collect()
    }

    /// JSON leaves of every object, stored or not: what most of a mesh's size is.
    fn object_leaves(&self) -> usize {
        fn leaves(v: &Value) -> usize {
            match v {
                Value::Object(m) => m.values().map(leaves).sum::<usize>() + 1,
                Value::Array(a) => a.iter().map(leaves).sum::<usize>() + 1,
                _ => 1,
            }
        }
        let objects = self.object_templates().iter();
        objects.chain(self.world_templates()).map(leaves).sum()
    }

    /// The sidecar proxies of `clients` (namespaces as templates), for the oracle.
    fn sidecars(&self, clients: &[ClientSpec]) -> Vec<Client> {
        let proxy = |c: &ClientSpec| {
            let namespace = self.render_str(&c.namespace);
            Client::labelled(&c.name, &namespace, &c.region, json!(c.labels))
        };
        clients.iter().map(proxy).collect()
    }

    /// The oracle's world: the namespaces, one node per region of `regions`, the
    /// oracle-only objects and `stored` (the objects as the API server stores them).
    fn world_in<R: AsRef<str>>(&self, regions: &[R], stored: &[Value]) -> World {
        let namespaces = self.namespace_names();
        let ns: Vec<&str> = namespaces.iter().map(String::as_str).collect();
        let regions: Vec<&str> = regions.iter().map(AsRef::as_ref).collect();
        let mut world = World::new(&ns, &regions);
        for object in stored.iter().cloned().chain(self.world_objects()) {
            world.add(object);
        }
        world
    }

    /// The namespaces and every object as one `kubectl apply -f` stream, names filled in.
    fn yaml_documents(&self) -> String {
        let namespaces = self
            .namespace_names()
            .into_iter()
            .map(|n| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}));
        let docs: Vec<String> = namespaces
            .chain(self.api_objects())
            .chain(self.world_objects())
            .map(|o| yaml::to_yaml(&o))
            .collect();
        format!("---\n{}\n", docs.join("\n---\n"))
    }

    /// Why a stored Istio object of this mesh is invalid, if one is: its CRD schema (at
    /// its `apiVersion`), or Istio's own rules as `rule_errors` says them.
    fn first_invalid(&self, rule_errors: impl Fn(&Value) -> Vec<String>) -> Option<String> {
        self.api_objects().into_iter().find_map(|object| {
            let kind = object["kind"].as_str().unwrap_or_default();
            if kind == "Service" {
                return None;
            }
            let version = object["apiVersion"]
                .as_str()
                .and_then(|v| v.rsplit('/').next())
                .unwrap_or_default();
            let name = &object["metadata"]["name"];
            if let Err(errors) = crate::crd_schema::validate_istio(kind, version, &object) {
                return Some(format!("{kind} {name}: schema: {errors:?}"));
            }
            let errors = rule_errors(&object);
            (!errors.is_empty()).then(|| format!("{kind} {name}: {}", errors.join("; ")))
        })
    }
}

/// The part of a mesh type's [`Generated`] impl its common fields and inherent methods
/// answer; used inside the `impl Generated for ...` block.
#[macro_export]
macro_rules! templated_mesh {
    () => {
        fn seed(&self) -> u64 {
            self.seed
        }

        fn prefix(&self) -> &str {
            &self.prefix
        }

        fn with_prefix(&self, prefix: &str) -> Self {
            Self {
                prefix: prefix.to_owned(),
                ..self.clone()
            }
        }

        fn namespace_templates(&self) -> &[String] {
            &self.namespaces
        }

        fn object_templates(&self) -> &[serde_json::Value] {
            &self.objects
        }

        fn world_templates(&self) -> &[serde_json::Value] {
            &self.world
        }

        fn smaller(&self) -> Vec<Self> {
            self.shrink()
        }

        fn without_namespace(&self, namespace: &str) -> Self {
            let mut smaller = self.clone();
            smaller.namespaces.retain(|n| n != namespace);
            smaller.clients.retain(|c| c.namespace != namespace);
            let elsewhere = |o: &serde_json::Value| o["metadata"]["namespace"] != namespace;
            smaller.objects.retain(elsewhere);
            smaller.world.retain(elsewhere);
            smaller
        }

        fn weight(&self) -> usize {
            self.size()
        }

        fn alert_namespace(&self) -> String {
            self.alert_ns()
        }

        fn to_yaml(&self) -> String {
            Self::to_yaml(self)
        }
    };
}
