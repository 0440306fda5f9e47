//! RBAC enforcement over HTTP through `kube::Client`: tokens name groups, bindings grant
//! roles, everything else is refused with the real 403 `Status`.

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Config};
use kube_standin::{Identity, RbacPolicy, StandIn, seed_demo_mesh};
use serde_json::json;

const MANIFEST: &str = include_str!("data/rbac-fixture.yaml");

async fn client_with_token(s: &StandIn, token: Option<&str>) -> Client {
    let mut cfg = Config::new(s.url().parse().expect("stand-in URL is a URI"));
    cfg.auth_info.token = token.map(|t| t.to_owned().into());
    Client::try_from(cfg).expect("kube client")
}

fn status_of(e: kube::Error) -> Box<kube::core::Status> {
    match e {
        kube::Error::Api(s) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn group_tokens_get_exactly_what_is_bound_to_the_group() {
    let s = StandIn::start().await.expect("start");
    seed_demo_mesh(&s);
    s.enforce_rbac(RbacPolicy::from_manifest(MANIFEST).expect("manifest"));
    let restarter = client_with_token(&s, Some("group:restarters")).await;
    let deployments: Api<Deployment> = Api::namespaced(restarter.clone(), "shop");

    deployments
        .get("checkout-v2")
        .await
        .expect("get is granted");
    let patch = json!({"metadata": {"annotations": {"x": "y"}}});
    deployments
        .patch(
            "checkout-v2",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .expect("patch is granted");

    let err = status_of(
        deployments
            .list(&ListParams::default())
            .await
            .expect_err("list is not granted"),
    );
    assert_eq!(err.code, 403);
    assert_eq!(err.reason, "Forbidden");
    assert_eq!(
        err.message,
        "deployments.apps is forbidden: User \"restarters\" cannot list resource \"deployments\" in API group \"apps\" in the namespace \"shop\""
    );
    let err = status_of(
        deployments
            .delete("checkout-v2", &Default::default())
            .await
            .expect_err("delete is not granted"),
    );
    assert_eq!(
        err.message,
        "deployments.apps \"checkout-v2\" is forbidden: User \"restarters\" cannot delete resource \"deployments\" in API group \"apps\" in the namespace \"shop\""
    );
    // A status write is another resource (deployments/status), not granted by deployments.
    let err = status_of(
        deployments
            .patch_status(
                "checkout-v2",
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": {}})),
            )
            .await
            .expect_err("status is not granted"),
    );
    assert!(
        err.message
            .contains("cannot patch resource \"deployments/status\""),
        "{}",
        err.message
    );

    // Core v1 events are not events.k8s.io events.
    let core_events: Api<DynamicObject> = Api::namespaced_with(
        restarter.clone(),
        "shop",
        &kube::core::ApiResource::from_gvk_with_plural(
            &kube::core::GroupVersionKind::gvk("", "v1", "Event"),
            "events",
        ),
    );
    let event: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": "e1", "namespace": "shop"},
        "involvedObject": {"kind": "Deployment", "name": "checkout-v2", "namespace": "shop"},
        "reason": "Test", "message": "m", "type": "Normal"
    }))
    .expect("event");
    let err = status_of(
        core_events
            .create(&PostParams::default(), &event)
            .await
            .expect_err("core events are not granted"),
    );
    assert!(err.message.contains("in API group \"\""), "{}", err.message);

    // Every refused request is in the log with its status and the caller's identity.
    let refused: Vec<_> = s
        .requests()
        .into_iter()
        .filter(|r| r.status == 403)
        .collect();
    assert_eq!(refused.len(), 4, "{refused:#?}");
    assert!(refused.iter().all(|r| r.user == "restarters"));
    // Nothing refused was stored: the object kept its annotation from the granted patch only.
    let stored = s
        .get("apps/v1", "Deployment", Some("shop"), "checkout-v2")
        .expect("still there");
    assert_eq!(stored["metadata"]["annotations"]["x"], "y");
}

#[tokio::test]
async fn anonymous_and_unbound_callers_are_refused_admins_are_not() {
    let s = StandIn::start().await.expect("start");
    seed_demo_mesh(&s);
    s.enforce_rbac(RbacPolicy::from_manifest(MANIFEST).expect("manifest"));
    for (token, user) in [
        (None, "system:anonymous"),
        (Some("group:strangers"), "strangers"),
    ] {
        let client = client_with_token(&s, token).await;
        let deployments: Api<Deployment> = Api::namespaced(client, "shop");
        let err = status_of(deployments.get("checkout-v2").await.expect_err("refused"));
        assert_eq!(err.code, 403);
        assert!(
            err.message.contains(&format!("User \"{user}\"")),
            "{}",
            err.message
        );
    }
    let admin = client_with_token(&s, Some("kube-standin-dummy-token")).await;
    let deployments: Api<Deployment> = Api::namespaced(admin, "shop");
    deployments
        .list(&ListParams::default())
        .await
        .expect("system:masters bypasses RBAC");
    // Off again: anyone may do anything.
    s.disable_rbac();
    let anonymous = client_with_token(&s, None).await;
    Api::<Deployment>::namespaced(anonymous, "shop")
        .list(&ListParams::default())
        .await
        .expect("no RBAC, no refusal");
}

#[tokio::test]
async fn admin_endpoint_turns_enforcement_on_and_off() {
    let s = StandIn::start().await.expect("start");
    seed_demo_mesh(&s);
    let admin = client_with_token(&s, Some("kube-standin-dummy-token")).await;
    let send = |method: &str, body: &str| {
        http::Request::builder()
            .method(method)
            .uri("/_standin/rbac")
            .body(body.as_bytes().to_vec())
            .expect("request")
    };
    let on: serde_json::Value = admin
        .request(send("POST", MANIFEST))
        .await
        .expect("enforce");
    assert_eq!(on, json!({"enforced": true, "roles": 2, "bindings": 2}));
    let member = client_with_token(&s, Some("group:restarters")).await;
    let deployments: Api<Deployment> = Api::namespaced(member, "shop");
    assert_eq!(
        status_of(
            deployments
                .list(&ListParams::default())
                .await
                .expect_err("refused")
        )
        .code,
        403
    );
    let bad = admin
        .request::<serde_json::Value>(send(
            "POST",
            "kind: Role\napiVersion: rbac.authorization.k8s.io/v1\nmetadata: {name: x}\n",
        ))
        .await
        .expect_err("invalid manifest");
    assert!(status_of(bad).message.contains("invalid RBAC manifest"));
    let off: serde_json::Value = admin.request(send("DELETE", "")).await.expect("off");
    assert_eq!(off["enforced"], false);
    deployments
        .list(&ListParams::default())
        .await
        .expect("not enforced any more");
}

#[test]
fn the_projects_rbac_manifest_loads() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/rbac.yaml");
    let policy = RbacPolicy::from_file(&path).expect("deploy/rbac.yaml loads");
    let who = Identity::from_bearer(Some("group:mesh-remediation-latency-restart"));
    assert_eq!(who.user, "mesh-remediation-latency-restart");
    assert!(
        policy
            .grants("mesh-remediation-latency-restart")
            .contains(&("patch".into(), "apps".into(), "deployments".into()))
    );
}
