//! Drives the stand-in through `kube::Client`, exactly as production code would.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Namespace};
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, Preconditions,
};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, Config};
use kube_standin::{Fault, FaultKind, StandIn, seed_demo_mesh};
use serde_json::{Value, json};

fn client_for(s: &StandIn) -> Client {
    let cfg = Config::new(s.url().parse().expect("stand-in URL is a URI"));
    Client::try_from(cfg).expect("kube client")
}

async fn demo() -> (StandIn, Client) {
    let s = StandIn::start().await.expect("start stand-in");
    seed_demo_mesh(&s);
    let c = client_for(&s);
    (s, c)
}

fn api_err(e: kube::Error) -> Box<kube::core::Status> {
    match e {
        kube::Error::Api(s) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn istio(kind: &str, plural: &str, version: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("networking.istio.io", version, kind),
        plural,
    )
}

#[tokio::test]
async fn get_and_list_with_selectors() {
    let (s, c) = demo().await;
    let deps: Api<Deployment> = Api::namespaced(c.clone(), "shop");
    let d = deps.get("checkout-v1").await.expect("get");
    assert_eq!(d.metadata.generation, Some(1));
    assert_eq!(d.status.and_then(|st| st.ready_replicas), Some(2));

    let names = |l: kube::core::ObjectList<Deployment>| -> Vec<String> {
        l.items
            .into_iter()
            .filter_map(|d| d.metadata.name)
            .collect()
    };
    let opted = deps
        .list(&ListParams::default().labels("auto_remediation=active"))
        .await
        .expect("list");
    assert_eq!(
        names(opted),
        ["checkout-v1", "checkout-v2", "frontend", "orders"]
    );
    let l = deps
        .list(&ListParams::default().labels("app in (checkout),version!=v1"))
        .await
        .expect("list");
    assert_eq!(names(l), ["checkout-v2"]);
    let l = deps
        .list(&ListParams::default().labels("!auto_remediation"))
        .await
        .expect("list");
    assert_eq!(names(l), ["payments"]);
    let l = deps
        .list(&ListParams::default().labels("app notin (checkout,orders),auto_remediation==active"))
        .await
        .expect("list");
    assert_eq!(names(l), ["frontend"]);
    let l = deps
        .list(&ListParams::default().fields("metadata.name=orders"))
        .await
        .expect("list");
    assert_eq!(names(l), ["orders"]);

    let all: Api<Deployment> = Api::all(c.clone());
    let l = all
        .list(&ListParams::default().labels("auto_remediation=active"))
        .await
        .expect("list all");
    assert_eq!(l.items.len(), 5, "includes kube-system/coredns");

    let e = api_err(
        deps.list(&ListParams::default().labels("a in b"))
            .await
            .expect_err("bad selector"),
    );
    assert_eq!((e.code, e.reason.as_str()), (400, "BadRequest"));

    let e = api_err(deps.get("nope").await.expect_err("missing"));
    assert_eq!(e.code, 404);
    assert_eq!(e.reason, "NotFound");
    assert_eq!(e.message, "deployments.apps \"nope\" not found");
    let d = e.details.expect("details");
    assert_eq!(
        (d.name.as_str(), d.group.as_str(), d.kind.as_str()),
        ("nope", "apps", "deployments")
    );

    let ns: Api<Namespace> = Api::all(c);
    let shop = ns.get("shop").await.expect("namespace");
    assert_eq!(
        shop.metadata.labels.expect("labels")["istio-injection"],
        "enabled"
    );
    drop(s);
}

#[tokio::test]
async fn merge_patch_resource_version_precondition() {
    let (s, c) = demo().await;
    let deps: Api<Deployment> = Api::namespaced(c, "shop");
    let before = deps.get("orders").await.expect("get");
    let rv = before.metadata.resource_version.clone().expect("rv");

    // Stale resourceVersion inside a merge patch -> 409 Conflict.
    let stale =
        Patch::Merge(json!({"metadata": {"resourceVersion": "1", "annotations": {"x": "y"}}}));
    let e = api_err(
        deps.patch("orders", &PatchParams::default(), &stale)
            .await
            .expect_err("stale"),
    );
    assert_eq!(e.code, 409);
    assert!(e.is_conflict());
    assert_eq!(
        e.message,
        "Operation cannot be fulfilled on deployments.apps \"orders\": the object has been modified; please apply your changes to the latest version and try again"
    );
    assert_eq!(
        deps.get("orders")
            .await
            .expect("get")
            .metadata
            .resource_version
            .as_deref(),
        Some(rv.as_str())
    );

    // Matching resourceVersion -> applied, new resourceVersion.
    let ok = Patch::Merge(json!({"metadata": {"resourceVersion": rv, "annotations": {"x": "y"}}}));
    let after = deps
        .patch("orders", &PatchParams::default(), &ok)
        .await
        .expect("patch");
    assert_ne!(after.metadata.resource_version, Some(rv.clone()));
    assert_eq!(after.metadata.annotations.expect("annotations")["x"], "y");
    // Same (now stale) resourceVersion again -> 409: only one of two racing writers wins.
    assert_eq!(
        api_err(
            deps.patch("orders", &PatchParams::default(), &ok)
                .await
                .expect_err("second")
        )
        .code,
        409
    );
    drop(s);
}

#[tokio::test]
async fn put_replace_needs_current_resource_version() {
    let (s, c) = demo().await;
    let deps: Api<Deployment> = Api::namespaced(c.clone(), "shop");
    let mut d = deps.get("frontend").await.expect("get");
    d.metadata
        .labels
        .get_or_insert_default()
        .insert("team".into(), "web".into());
    let updated = deps
        .replace("frontend", &PostParams::default(), &d)
        .await
        .expect("replace");
    assert_eq!(updated.metadata.labels.expect("labels")["team"], "web");
    // `d` still carries the old resourceVersion.
    let e = api_err(
        deps.replace("frontend", &PostParams::default(), &d)
            .await
            .expect_err("stale put"),
    );
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));

    // Custom resources do not allow unconditional updates.
    let vs: Api<DynamicObject> =
        Api::namespaced_with(c, "shop", &istio("VirtualService", "virtualservices", "v1"));
    let mut obj = vs.get("checkout").await.expect("get vs");
    obj.metadata.resource_version = None;
    let e = api_err(
        vs.replace("checkout", &PostParams::default(), &obj)
            .await
            .expect_err("no rv"),
    );
    assert_eq!(e.code, 422);
    assert!(
        e.message.contains(
            "metadata.resourceVersion: Invalid value: 0: must be specified for an update"
        ),
        "{}",
        e.message
    );
    drop(s);
}

#[tokio::test]
async fn dry_run_stores_nothing_and_bumps_nothing() {
    let (s, c) = demo().await;
    let deps: Api<Deployment> = Api::namespaced(c.clone(), "shop");
    let before = s
        .get("apps/v1", "Deployment", Some("shop"), "checkout-v2")
        .expect("seeded");
    let counter = s.resource_version();
    let patch = Patch::Merge(
        json!({"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": "2025-01-01T00:00:00Z"}}}}}),
    );
    let out = deps
        .patch("checkout-v2", &PatchParams::default().dry_run(), &patch)
        .await
        .expect("dry run");
    assert_eq!(
        out.metadata.generation,
        Some(2),
        "the dry-run result shows the would-be generation"
    );
    assert_eq!(
        out.spec
            .and_then(|sp| sp.template.metadata)
            .and_then(|m| m.annotations)
            .expect("annotations")["kubectl.kubernetes.io/restartedAt"],
        "2025-01-01T00:00:00Z"
    );
    assert_eq!(
        s.get("apps/v1", "Deployment", Some("shop"), "checkout-v2")
            .expect("still there"),
        before
    );
    assert_eq!(s.resource_version(), counter);

    // dry-run create and delete too
    let ev: Api<Event> = Api::namespaced(c.clone(), "shop");
    let e: Event = serde_json::from_value(json!({"metadata": {"name": "dry"}, "involvedObject": {"kind": "Deployment", "name": "orders", "namespace": "shop"}, "reason": "Test", "message": "m", "type": "Normal"})).expect("event");
    ev.create(
        &PostParams {
            dry_run: true,
            ..Default::default()
        },
        &e,
    )
    .await
    .expect("dry create");
    assert!(s.get("v1", "Event", Some("shop"), "dry").is_none());
    deps.delete("orders", &DeleteParams::default().dry_run())
        .await
        .expect("dry delete");
    assert!(
        s.get("apps/v1", "Deployment", Some("shop"), "orders")
            .is_some()
    );
    assert_eq!(s.resource_version(), counter);

    // Dry run of an invalid Istio object is still validated.
    let vs: Api<DynamicObject> =
        Api::namespaced_with(c, "shop", &istio("VirtualService", "virtualservices", "v1"));
    let bad = Patch::Merge(
        json!({"spec": {"http": [{"route": [{"destination": {"host": "checkout"}, "weight": "heavy"}]}]}}),
    );
    let e = api_err(
        vs.patch("checkout", &PatchParams::default().dry_run(), &bad)
            .await
            .expect_err("invalid"),
    );
    assert_eq!(e.code, 422);
    assert_eq!(s.resource_version(), counter);

    let reqs = s.requests();
    assert!(
        reqs.iter()
            .filter(|r| r.method != "GET")
            .all(|r| r.is_dry_run() || r.body.get("dryRun").is_some()),
        "{reqs:#?}"
    );
    drop(s);
}

#[tokio::test]
async fn generation_and_rollout_settling() {
    let (s, c) = demo().await;
    let deps: Api<Deployment> = Api::namespaced(c, "shop");
    let pp = PatchParams::default();
    // Metadata-only change: no generation bump.
    let d = deps
        .patch(
            "orders",
            &pp,
            &Patch::Merge(json!({"metadata": {"labels": {"x": "1"}}})),
        )
        .await
        .expect("labels");
    assert_eq!(d.metadata.generation, Some(1));
    // Status change through /status: no generation bump.
    let d = deps
        .patch_status(
            "orders",
            &pp,
            &Patch::Merge(json!({"status": {"readyReplicas": 1}})),
        )
        .await
        .expect("status");
    assert_eq!(d.metadata.generation, Some(1));
    assert_eq!(d.status.expect("status").ready_replicas, Some(1));
    // A status change on the main resource is ignored.
    let d = deps
        .patch(
            "orders",
            &pp,
            &Patch::Merge(json!({"status": {"readyReplicas": 0}})),
        )
        .await
        .expect("ignored");
    assert_eq!(d.status.expect("status").ready_replicas, Some(1));

    // Spec change with settling off: generation 2, observedGeneration stays 1 (rollout in progress).
    s.set_settle_rollouts(false);
    let restart = Patch::Merge(
        json!({"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": "now"}}}}}),
    );
    let d = deps.patch("orders", &pp, &restart).await.expect("restart");
    assert_eq!(d.metadata.generation, Some(2));
    let d = deps.get("orders").await.expect("get");
    assert_eq!(
        d.status.as_ref().and_then(|st| st.observed_generation),
        Some(1)
    );

    // Settling on: the simulated controller completes the rollout after the write.
    s.set_settle_rollouts(true);
    let d = deps
        .patch(
            "orders",
            &pp,
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .expect("scale");
    assert_eq!(d.metadata.generation, Some(3));
    let d = deps.get("orders").await.expect("get");
    let st = d.status.expect("status");
    assert_eq!(st.observed_generation, Some(3));
    assert_eq!(
        (
            st.replicas,
            st.updated_replicas,
            st.ready_replicas,
            st.available_replicas
        ),
        (Some(3), Some(3), Some(3), Some(3))
    );
    drop(s);
}

#[tokio::test]
async fn json_patch_and_strategic_merge() {
    let (s, c) = demo().await;
    let deps: Api<Deployment> = Api::namespaced(c.clone(), "shop");
    let d = deps.get("frontend").await.expect("get");
    let rv = d.metadata.resource_version.expect("rv");
    let p: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
        {"op": "add", "path": "/metadata/annotations", "value": {"a": "b"}},
    ]))
    .expect("patch");
    deps.patch(
        "frontend",
        &PatchParams::default(),
        &Patch::Json::<()>(p.clone()),
    )
    .await
    .expect("json patch");
    // The same `test` now fails -> 422.
    let e = api_err(
        deps.patch("frontend", &PatchParams::default(), &Patch::Json::<()>(p))
            .await
            .expect_err("test fails"),
    );
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));

    // Strategic merge: containers merge by name.
    let smp = Patch::Strategic(
        json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "example/frontend:2.0"}]}}}}),
    );
    let d = deps
        .patch("frontend", &PatchParams::default(), &smp)
        .await
        .expect("smp");
    let cs = d
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod spec")
        .containers;
    assert_eq!(cs.len(), 1);
    assert_eq!(cs[0].image.as_deref(), Some("example/frontend:2.0"));

    // Istio CRDs do not accept strategic merge patches (415).
    let vs: Api<DynamicObject> =
        Api::namespaced_with(c, "shop", &istio("VirtualService", "virtualservices", "v1"));
    let e = api_err(
        vs.patch(
            "checkout",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {}})),
        )
        .await
        .expect_err("415"),
    );
    assert_eq!((e.code, e.reason.as_str()), (415, "UnsupportedMediaType"));
    drop(s);
}

#[tokio::test]
async fn server_side_apply() {
    let (s, c) = demo().await;
    let dr: Api<DynamicObject> = Api::namespaced_with(
        c.clone(),
        "shop",
        &istio("DestinationRule", "destinationrules", "v1"),
    );
    let cfg = json!({
        "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": "orders-db", "namespace": "shop"},
        "spec": {"trafficPolicy": {"outlierDetection": {"consecutive5xxErrors": 5, "interval": "10s", "baseEjectionTime": "30s"}}},
    });
    let out = dr
        .patch(
            "orders-db",
            &PatchParams::apply("remediator"),
            &Patch::Apply(&cfg),
        )
        .await
        .expect("apply");
    // Merged into the existing object: host and tls kept.
    assert_eq!(out.data["spec"]["host"], "orders-db.shop.svc.cluster.local");
    assert_eq!(
        out.data["spec"]["trafficPolicy"]["tls"]["mode"],
        "ISTIO_MUTUAL"
    );
    assert_eq!(
        out.data["spec"]["trafficPolicy"]["outlierDetection"]["consecutive5xxErrors"],
        5
    );

    // Another manager changing an owned field conflicts, unless forced.
    let other = json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "orders-db"},
        "spec": {"trafficPolicy": {"outlierDetection": {"consecutive5xxErrors": 7}}}});
    let e = api_err(
        dr.patch(
            "orders-db",
            &PatchParams::apply("someone-else"),
            &Patch::Apply(&other),
        )
        .await
        .expect_err("conflict"),
    );
    assert_eq!(e.code, 409);
    assert!(
        e.message
            .starts_with("Apply failed with 1 conflict: conflict with \"remediator\""),
        "{}",
        e.message
    );
    let out = dr
        .patch(
            "orders-db",
            &PatchParams::apply("someone-else").force(),
            &Patch::Apply(&other),
        )
        .await
        .expect("forced");
    assert_eq!(
        out.data["spec"]["trafficPolicy"]["outlierDetection"]["consecutive5xxErrors"],
        7
    );

    // A manager dropping a field it applied removes it.
    let less = json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "orders-db"},
        "spec": {"trafficPolicy": {"outlierDetection": {"interval": "10s", "baseEjectionTime": "30s"}}}});
    let out = dr
        .patch(
            "orders-db",
            &PatchParams::apply("remediator"),
            &Patch::Apply(&less),
        )
        .await
        .expect("apply less");
    assert_eq!(
        out.data["spec"]["trafficPolicy"]["outlierDetection"]["consecutive5xxErrors"], 7,
        "still owned by someone-else"
    );

    // Apply creates when absent.
    let fresh = json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "payments"},
        "spec": {"host": "payments"}});
    dr.patch(
        "payments",
        &PatchParams::apply("remediator"),
        &Patch::Apply(&fresh),
    )
    .await
    .expect("create by apply");
    assert!(
        s.get(
            "networking.istio.io/v1",
            "DestinationRule",
            Some("shop"),
            "payments"
        )
        .is_some()
    );

    // fieldManager is required for apply (kube checks it client-side too, so go raw).
    let req = http::Request::patch(format!(
        "{}/apis/networking.istio.io/v1/namespaces/shop/destinationrules/orders",
        s.url()
    ))
    .header("content-type", "application/apply-patch+yaml")
    .body(serde_json::to_vec(&fresh).expect("json"))
    .expect("request");
    let e = api_err(c.request::<Value>(req).await.expect_err("no fieldManager"));
    assert_eq!(e.code, 422);
    assert!(
        e.message.contains("fieldManager: Required value"),
        "{}",
        e.message
    );

    // A YAML apply body (what kubectl sends), and an unsupported dryRun value.
    let yaml = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: payments\nspec:\n  host: payments\n  trafficPolicy:\n    tls:\n      mode: ISTIO_MUTUAL\n";
    let url = format!(
        "{}/apis/networking.istio.io/v1/namespaces/shop/destinationrules/payments",
        s.url()
    );
    let req = http::Request::patch(format!("{url}?fieldManager=kubectl"))
        .header("content-type", "application/apply-patch+yaml")
        .body(yaml.as_bytes().to_vec())
        .expect("request");
    let out: Value = c.request(req).await.expect("yaml apply");
    assert_eq!(out["spec"]["trafficPolicy"]["tls"]["mode"], "ISTIO_MUTUAL");
    let req = http::Request::patch(format!("{url}?fieldManager=kubectl&dryRun=Some"))
        .header("content-type", "application/apply-patch+yaml")
        .body(yaml.as_bytes().to_vec())
        .expect("request");
    let e = api_err(c.request::<Value>(req).await.expect_err("bad dryRun"));
    assert_eq!(e.code, 422);
    assert!(
        e.message
            .starts_with("PatchOptions.meta.k8s.io \"\" is invalid: dryRun: Unsupported value"),
        "{}",
        e.message
    );
    drop(s);
}

#[tokio::test]
async fn events_create_and_namespace_must_exist() {
    let (s, c) = demo().await;
    let ev: Api<Event> = Api::namespaced(c.clone(), "shop");
    let e: Event = serde_json::from_value(json!({
        "metadata": {"generateName": "orders."},
        "involvedObject": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "orders", "namespace": "shop"},
        "reason": "AutoRemediation", "message": "restarted", "type": "Normal",
        "source": {"component": "mesh-remediation"},
    }))
    .expect("event");
    let created = ev
        .create(&PostParams::default(), &e)
        .await
        .expect("create event");
    let name = created.metadata.name.expect("generated name");
    assert!(
        name.starts_with("orders.") && name.len() == "orders.".len() + 5,
        "{name}"
    );
    let l = ev
        .list(&ListParams::default().fields("involvedObject.name=orders,reason=AutoRemediation"))
        .await
        .expect("list");
    assert_eq!(l.items.len(), 1);

    // events.k8s.io/v1
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("events.k8s.io", "v1", "Event"),
        "events",
    );
    let ev2: Api<DynamicObject> = Api::namespaced_with(c.clone(), "shop", &ar);
    let mut o = DynamicObject::new("e2", &ar).within("shop");
    o.data = json!({"eventTime": "2025-01-01T00:00:00.000000Z", "reportingController": "mesh-remediation",
        "reportingInstance": "lambda", "action": "Restart", "reason": "AutoRemediation", "type": "Normal",
        "regarding": {"kind": "Deployment", "name": "orders", "namespace": "shop"}, "note": "restarted"});
    ev2.create(&PostParams::default(), &o)
        .await
        .expect("events.k8s.io create");
    o.data["action"] = json!(null);
    o.metadata.name = Some("e3".into());
    let err = api_err(
        ev2.create(&PostParams::default(), &o)
            .await
            .expect_err("action required"),
    );
    assert_eq!(err.code, 422);

    // A namespace that does not exist -> 404 for the namespace.
    let nowhere: Api<Event> = Api::namespaced(c, "nowhere");
    let err = api_err(
        nowhere
            .create(&PostParams::default(), &e)
            .await
            .expect_err("no namespace"),
    );
    assert_eq!(
        (err.code, err.message.as_str()),
        (404, "namespaces \"nowhere\" not found")
    );
    // Create twice -> AlreadyExists.
    let again = api_err(
        ev2.create(&PostParams::default(), &{
            let mut o2 = o.clone();
            o2.metadata.name = Some("e2".into());
            o2.data["action"] = json!("Restart");
            o2
        })
        .await
        .expect_err("exists"),
    );
    assert_eq!((again.code, again.reason.as_str()), (409, "AlreadyExists"));
    drop(s);
}

#[tokio::test]
async fn istio_objects_share_storage_and_are_validated() {
    let (s, c) = demo().await;
    let v1: Api<DynamicObject> = Api::namespaced_with(
        c.clone(),
        "shop",
        &istio("VirtualService", "virtualservices", "v1"),
    );
    let v1b1: Api<DynamicObject> = Api::namespaced_with(
        c.clone(),
        "shop",
        &istio("VirtualService", "virtualservices", "v1beta1"),
    );
    let o = v1b1.get("checkout").await.expect("served at v1beta1");
    assert_eq!(
        o.types.expect("types").api_version,
        "networking.istio.io/v1beta1"
    );

    let shift = Patch::Merge(json!({"spec": {"http": [{"route": [
        {"destination": {"host": "checkout", "subset": "v1"}, "weight": 100},
        {"destination": {"host": "checkout", "subset": "v2"}, "weight": 0}]}]}}));
    let out = v1
        .patch("checkout", &PatchParams::default(), &shift)
        .await
        .expect("shift");
    assert_eq!(out.metadata.generation, Some(2));
    assert_eq!(
        v1b1.get("checkout").await.expect("get").data["spec"]["http"][0]["route"][0]["weight"],
        100
    );

    // wrong type -> 422 with causes
    let bad = Patch::Merge(
        json!({"spec": {"http": [{"route": [{"destination": {"host": "checkout"}, "weight": "string"}]}]}}),
    );
    let e = api_err(
        v1.patch("checkout", &PatchParams::default(), &bad)
            .await
            .expect_err("invalid"),
    );
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        e.message,
        "VirtualService.networking.istio.io \"checkout\" is invalid: spec.http[0].route[0].weight: Invalid value: \"string\": spec.http[0].route[0].weight in body must be of type integer: \"string\""
    );
    let causes = e.details.expect("details").causes;
    assert_eq!(causes[0].field, "spec.http[0].route[0].weight");
    assert_eq!(causes[0].reason, "FieldValueTypeInvalid");

    // bad enum on a DestinationRule
    let dr: Api<DynamicObject> = Api::namespaced_with(
        c.clone(),
        "shop",
        &istio("DestinationRule", "destinationrules", "v1"),
    );
    let e = api_err(
        dr.patch(
            "orders-db",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"trafficPolicy": {"tls": {"mode": "NOPE"}}}})),
        )
        .await
        .expect_err("enum"),
    );
    assert_eq!(e.code, 422);

    // unknown field: pruned by default, rejected with Strict
    let unknown = Patch::Merge(
        json!({"spec": {"trafficPolicy": {"outlierDetection": {"consecutive5xxErrors": 3, "bogus": 1}}}}),
    );
    let e = api_err(
        dr.patch(
            "orders-db",
            &PatchParams::default().validation_strict(),
            &unknown,
        )
        .await
        .expect_err("strict"),
    );
    assert_eq!(e.code, 400);
    assert_eq!(
        e.message,
        "strict decoding error: unknown field \"spec.trafficPolicy.outlierDetection.bogus\""
    );
    let out = dr
        .patch("orders-db", &PatchParams::default(), &unknown)
        .await
        .expect("pruned");
    assert_eq!(
        out.data["spec"]["trafficPolicy"]["outlierDetection"],
        json!({"consecutive5xxErrors": 3})
    );

    // Every stored Istio object still validates.
    for obj in s.objects() {
        if obj["apiVersion"]
            .as_str()
            .is_some_and(|a| a.starts_with("networking.istio.io/"))
        {
            let kind = obj["kind"].as_str().expect("kind");
            assert_eq!(
                kube_standin::validate_istio(kind, "v1", &obj),
                Ok(()),
                "{obj}"
            );
        }
    }
    drop(s);
}

#[tokio::test]
async fn delete_and_preconditions() {
    let (s, c) = demo().await;
    let deps: Api<Deployment> = Api::namespaced(c, "shop");
    let e = api_err(
        deps.delete(
            "payments",
            &DeleteParams::default().preconditions(Preconditions {
                resource_version: Some("1".into()),
                uid: None,
            }),
        )
        .await
        .expect_err("precondition"),
    );
    assert_eq!(e.code, 409);
    let gone = deps
        .delete("payments", &DeleteParams::default())
        .await
        .expect("delete");
    assert!(gone.is_right(), "deployments answer a delete with a Status");
    assert_eq!(
        api_err(deps.get("payments").await.expect_err("gone")).code,
        404
    );
    drop(s);
}

#[tokio::test]
async fn faults_status_codes() {
    let (s, _) = demo().await;
    // kube retries 429/503/504 by default; switch that off to see each answer.
    let mut cfg = Config::new(s.url().parse().expect("uri"));
    cfg.default_retry = false;
    let c = Client::try_from(cfg).expect("client");
    let deps: Api<Deployment> = Api::namespaced(c, "shop");
    s.add_fault(
        Fault::status(503)
            .method("GET")
            .path_contains("deployments/orders")
            .times(1),
    );
    let e = api_err(deps.get("orders").await.expect_err("503"));
    assert_eq!((e.code, e.reason.as_str()), (503, "ServiceUnavailable"));
    deps.get("orders").await.expect("times(1) spent");

    s.add_fault(Fault::throttle(2).method("PATCH").after(1).times(1));
    let pp = PatchParams::default();
    let noop = Patch::Merge(json!({"metadata": {"labels": {"n": "1"}}}));
    deps.patch("orders", &pp, &noop)
        .await
        .expect("first PATCH passes (after=1)");
    let e = api_err(deps.patch("orders", &pp, &noop).await.expect_err("429"));
    assert_eq!((e.code, e.reason.as_str()), (429, "TooManyRequests"));
    assert_eq!(e.details.expect("details").retry_after_seconds, 2);

    for (code, reason) in [
        (500, "InternalError"),
        (409, "Conflict"),
        (403, "Forbidden"),
    ] {
        s.clear_faults();
        s.add_fault(Fault::status(code).method("PATCH"));
        let e = api_err(deps.patch("orders", &pp, &noop).await.expect_err("fault"));
        assert_eq!((e.code, e.reason.as_str()), (code, reason));
        if code == 409 {
            assert!(
                e.message
                    .contains("deployments.apps \"orders\": the object has been modified"),
                "{}",
                e.message
            );
        }
    }
    s.clear_faults();
    let logged: Vec<u16> = s.requests().iter().map(|r| r.status).collect();
    assert_eq!(logged, [503, 200, 200, 429, 500, 409, 403]);
    drop(s);
}

#[tokio::test]
async fn kube_default_retry_rides_out_transient_faults() {
    let (s, c) = demo().await;
    let deps: Api<Deployment> = Api::namespaced(c, "shop");
    s.add_fault(Fault::status(503).method("GET").times(1));
    deps.get("orders")
        .await
        .expect("503 retried by kube's default retry policy");
    s.add_fault(Fault::throttle(1).method("PATCH").times(1));
    deps.patch(
        "orders",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"n": "1"}}})),
    )
    .await
    .expect("429 retried after Retry-After");
    let statuses: Vec<(String, u16)> = s
        .requests()
        .iter()
        .map(|r| (r.method.clone(), r.status))
        .collect();
    let want: Vec<(String, u16)> = [("GET", 503), ("GET", 200), ("PATCH", 429), ("PATCH", 200)]
        .into_iter()
        .map(|(m, c)| (m.to_string(), c))
        .collect();
    assert_eq!(statuses, want);
    drop(s);
}

#[tokio::test]
async fn fault_conflict_bump_defeats_a_precondition() {
    let (s, c) = demo().await;
    let deps: Api<Deployment> = Api::namespaced(c, "shop");
    let d = deps.get("orders").await.expect("get");
    let rv = d.metadata.resource_version.expect("rv");
    s.add_fault(Fault::new(FaultKind::ConflictBump).method("PATCH").times(1));
    let p = Patch::Merge(json!({"metadata": {"resourceVersion": rv, "annotations": {"a": "1"}}}));
    let e = api_err(
        deps.patch("orders", &PatchParams::default(), &p)
            .await
            .expect_err("raced"),
    );
    assert_eq!(e.code, 409);
    // Re-read and retry succeeds.
    let rv = deps
        .get("orders")
        .await
        .expect("get")
        .metadata
        .resource_version
        .expect("rv");
    let p = Patch::Merge(json!({"metadata": {"resourceVersion": rv, "annotations": {"a": "1"}}}));
    deps.patch("orders", &PatchParams::default(), &p)
        .await
        .expect("retry");
    drop(s);
}

#[tokio::test]
async fn fault_latency_reset_and_hang() {
    let (s, _) = demo().await;
    let mut cfg = Config::new(s.url().parse().expect("uri"));
    cfg.read_timeout = Some(Duration::from_millis(300));
    let c = Client::try_from(cfg).expect("client");
    let deps: Api<Deployment> = Api::namespaced(c, "shop");

    s.add_fault(Fault::latency(150).times(1));
    let t = Instant::now();
    deps.get("orders").await.expect("slow get");
    assert!(t.elapsed() >= Duration::from_millis(150));

    s.add_fault(Fault::new(FaultKind::Reset).times(1));
    let e = deps.get("orders").await.expect_err("reset");
    assert!(
        !matches!(e, kube::Error::Api(_)),
        "a reset is a transport error: {e:?}"
    );

    s.add_fault(Fault::new(FaultKind::Hang).times(1));
    let t = Instant::now();
    let e = deps.get("orders").await.expect_err("hang");
    assert!(!matches!(e, kube::Error::Api(_)), "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(5));
    deps.get("orders").await.expect("served again");
    let statuses: Vec<u16> = s.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 0, 0, 200]);
    drop(s);
}

#[tokio::test]
async fn keep_alive_replies_are_fast() {
    let (s, c) = demo().await;
    let deps: Api<Deployment> = Api::namespaced(c, "shop");
    deps.get("orders").await.expect("warm up");
    let t = Instant::now();
    for _ in 0..20 {
        deps.patch(
            "orders",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"n": "x"}}})),
        )
        .await
        .expect("patch");
    }
    // With Nagle + delayed ACK each reply could take ~40 ms (800 ms total).
    assert!(
        t.elapsed() < Duration::from_millis(600),
        "{:?}",
        t.elapsed()
    );
    drop(s);
}

#[tokio::test]
async fn admin_endpoints_and_kubeconfig() {
    let (s, _) = demo().await;
    let kc =
        kube::config::Kubeconfig::from_yaml(&s.kubeconfig_yaml("shop")).expect("kubeconfig parses");
    let cfg = Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .expect("config");
    assert_eq!(cfg.default_namespace, "shop");
    let c = Client::try_from(cfg).expect("client");

    let post = |path: &str, body: Value| {
        http::Request::post(format!("{}{path}", s.url()))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).expect("json"))
            .expect("request")
    };
    let _: Value = c
        .request(post("/_standin/faults", json!({"method": "GET", "path_contains": "virtualservices", "kind": {"status": {"code": 500}}, "times": 1})))
        .await
        .expect("add fault");
    let vs: Api<DynamicObject> =
        Api::default_namespaced_with(c.clone(), &istio("VirtualService", "virtualservices", "v1"));
    assert_eq!(
        api_err(vs.get("checkout").await.expect_err("500")).code,
        500
    );
    vs.get("checkout").await.expect("ok again");

    let reqs: Vec<kube_standin::RecordedRequest> = c
        .request(
            http::Request::get(format!("{}/_standin/requests", s.url()))
                .body(Vec::new())
                .expect("req"),
        )
        .await
        .expect("requests");
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].status, 500);
    let objs: Vec<Value> = c
        .request(
            http::Request::get(format!("{}/_standin/objects", s.url()))
                .body(Vec::new())
                .expect("req"),
        )
        .await
        .expect("objects");
    assert!(objs.len() >= 13);
    let seeded: Value = c
        .request(post(
            "/_standin/seed",
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "extra", "namespace": "other"}, "spec": {"replicas": 1}}),
        ))
        .await
        .expect("seed");
    assert_eq!(seeded, json!({}));
    assert!(
        s.get("apps/v1", "Deployment", Some("other"), "extra")
            .is_some()
    );
    assert!(s.get("v1", "Namespace", None, "other").is_some());
    drop(s);
}

#[tokio::test]
async fn discovery_works() {
    let (s, c) = demo().await;
    let v = c.apiserver_version().await.expect("version");
    assert_eq!(v.major, "1");
    let d = kube::discovery::Discovery::new(c)
        .run()
        .await
        .expect("discovery");
    let (ar, caps) = d
        .groups()
        .flat_map(|g| g.recommended_resources())
        .find(|(ar, _)| ar.kind == "VirtualService")
        .expect("VirtualService discovered");
    assert_eq!(ar.version, "v1");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    assert!(d.has_group("apps"));
    drop(s);
}
