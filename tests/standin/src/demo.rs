//! The demo mesh: a small `shop` namespace with Istio routing, plus `kube-system`.

use serde_json::{Value, json};

use crate::StandIn;

const OPT_IN: (&str, &str) = ("auto_remediation", "active");

fn deployment(ns: &str, name: &str, labels: &[(&str, &str)], opted_in: bool) -> Value {
    let mut l = serde_json::Map::new();
    for (k, v) in labels {
        l.insert((*k).to_string(), json!(v));
    }
    let selector = Value::Object(l.clone());
    let mut meta_labels = l;
    if opted_in {
        meta_labels.insert(OPT_IN.0.into(), json!(OPT_IN.1));
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "labels": meta_labels},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": selector},
                "spec": {"containers": [{"name": "app", "image": format!("example/{name}:1.0")}]},
            },
        },
        "status": {
            "observedGeneration": 1, "replicas": 2, "updatedReplicas": 2,
            "readyReplicas": 2, "availableReplicas": 2,
        },
    })
}

/// The Istio objects of the demo mesh (all `networking.istio.io/v1`, namespace `shop`).
pub(crate) fn demo_istio_objects() -> Vec<Value> {
    let labels = json!({"auto_remediation": "active"});
    vec![
        json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "checkout", "namespace": "shop", "labels": labels,
                         "annotations": {"auto-remediation.io/stable-subset": "v1"}},
            "spec": {"hosts": ["checkout"], "http": [{"route": [
                {"destination": {"host": "checkout", "subset": "v1"}, "weight": 50},
                {"destination": {"host": "checkout", "subset": "v2"}, "weight": 50},
            ]}]},
        }),
        json!({
            "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "checkout", "namespace": "shop", "labels": labels},
            "spec": {"host": "checkout", "subsets": [
                {"name": "v1", "labels": {"version": "v1"}},
                {"name": "v2", "labels": {"version": "v2"}},
            ]},
        }),
        json!({
            "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "orders-db", "namespace": "shop", "labels": labels},
            "spec": {"host": "orders-db.shop.svc.cluster.local",
                     "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}},
        }),
        json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "frontend", "namespace": "shop", "labels": labels},
            "spec": {"hosts": ["frontend"], "http": [{"route": [
                {"destination": {"host": "frontend", "subset": "us-east-1"}, "weight": 60},
                {"destination": {"host": "frontend", "subset": "us-west-2"}, "weight": 30},
                {"destination": {"host": "frontend", "subset": "eu-west-1"}, "weight": 10},
            ]}]},
        }),
        json!({
            "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "frontend", "namespace": "shop", "labels": labels},
            "spec": {"host": "frontend", "subsets": [
                {"name": "us-east-1", "labels": {"topology.kubernetes.io/region": "us-east-1"}},
                {"name": "us-west-2", "labels": {"topology.kubernetes.io/region": "us-west-2"}},
                {"name": "eu-west-1", "labels": {"topology.kubernetes.io/region": "eu-west-1"}},
            ]},
        }),
    ]
}

/// The demo mesh, as objects a server stores:
///
/// * namespace `shop` (label `istio-injection=enabled`) with Deployments `checkout-v1`,
///   `checkout-v2` (app=checkout, version=v1/v2), `orders`, `frontend` (opted in with
///   `auto_remediation=active`) and `payments` (NOT opted in); 2 replicas each, container
///   `app` image `example/<name>:1.0`, settled status;
/// * VirtualService `checkout` (subsets v1/v2 at 50/50, annotation
///   `auto-remediation.io/stable-subset: v1`) and DestinationRule `checkout` (v1/v2);
/// * DestinationRule `orders-db` (host `orders-db.shop.svc.cluster.local`, the database
///   `orders` calls; `ISTIO_MUTUAL`, no outlierDetection);
/// * VirtualService `frontend` (us-east-1 60, us-west-2 30, eu-west-1 10) and
///   DestinationRule `frontend` (subsets by `topology.kubernetes.io/region`);
/// * namespace `kube-system` with an opted-in Deployment `coredns` (protected namespace).
pub fn demo_mesh_objects() -> Vec<Value> {
    let mut objects = vec![
        json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "shop", "labels": {"istio-injection": "enabled", "kubernetes.io/metadata.name": "shop"}},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        }),
        json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "kube-system", "labels": {"kubernetes.io/metadata.name": "kube-system"}},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        }),
        deployment(
            "shop",
            "checkout-v1",
            &[("app", "checkout"), ("version", "v1")],
            true,
        ),
        deployment(
            "shop",
            "checkout-v2",
            &[("app", "checkout"), ("version", "v2")],
            true,
        ),
        deployment("shop", "orders", &[("app", "orders")], true),
        deployment("shop", "frontend", &[("app", "frontend")], true),
        deployment("shop", "payments", &[("app", "payments")], false),
        deployment("kube-system", "coredns", &[("k8s-app", "kube-dns")], true),
    ];
    objects.extend(demo_istio_objects());
    objects
}

/// Seeds the demo mesh ([`demo_mesh_objects`]) into the stand-in, with the empty budget
/// ConfigMap `kube-system/mesh-remediation-budget` that `deploy/rbac.yaml` creates.
pub fn seed_demo_mesh(standin: &StandIn) {
    for o in demo_mesh_objects() {
        standin.seed(o);
    }
    standin.seed(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "mesh-remediation-budget", "namespace": "kube-system",
                     "labels": {"app.kubernetes.io/name": "mesh-remediation"}},
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_istio_objects_pass_schema_validation() {
        for o in demo_istio_objects() {
            let kind = o["kind"].as_str().expect("kind");
            for v in ["v1", "v1beta1", "v1alpha3"] {
                assert_eq!(
                    crate::validate_istio(kind, v, &o),
                    Ok(()),
                    "{kind} {}",
                    o["metadata"]["name"]
                );
            }
        }
    }
}
