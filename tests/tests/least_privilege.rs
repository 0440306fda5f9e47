//! Least privilege enforced by a real API server: its RBAC authorizer with `deploy/rbac.yaml`
//! and its admission with `deploy/admission-policy.yaml`, each request made with a function
//! group's own identity (the test control plane's tokens, or impersonation on a cluster of
//! your own that has both manifests applied). Every out-of-scope change a compromised or
//! buggy function could try is refused, with a message naming what is allowed, and the stored
//! object is left as it was. The behaviour tests run their remediations, reverts and dry runs
//! with the same identities, so they pass through these policies too.
//!
//! Needs a real API server: `scripts/test` starts one.

#[path = "least_privilege/rules_used.rs"]
mod rules_used;

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use mesh_remediation::pipeline::Invocation;
use mesh_remediation::remediation::{DbCircuitBreak, Remediation};
use remediation_testkit::cluster::pipeline_with;
use remediation_testkit::mesh::{Kind, Mesh, assert_refused_saying, record};
use remediation_testkit::{TestCluster, events};
use serde_json::{Value, json};

const APP: &str = "checkout-v2";
const VS: &str = "checkout";
/// The DestinationRule of the database the db-circuit-break samples name (`db_host=orders-db`).
const DB: &str = "orders-db";

/// What a refused request answered.
#[derive(Debug)]
struct Refusal {
    code: u16,
    message: String,
}

fn refused<T>(result: kube::Result<T>) -> Refusal {
    match result {
        Err(kube::Error::Api(status)) => Refusal {
            code: status.code,
            message: status.message,
        },
        Err(other) => panic!("expected the API server to refuse, got {other}"),
        Ok(_) => panic!("expected the API server to refuse; it admitted the request"),
    }
}

fn assert_denied_by_policy(refusal: &Refusal, allowed: &str) {
    assert_eq!(refusal.code, 403, "{refusal:?}");
    assert!(
        refusal.message.contains("ValidatingAdmissionPolicy") && refusal.message.contains(allowed),
        "the denial names the policy and what is allowed ({allowed}): {refusal:?}"
    );
}

fn assert_denied_by_rbac(refusal: &Refusal, function: &str) {
    assert_eq!(refusal.code, 403, "{refusal:?}");
    assert!(
        refusal
            .message
            .contains(&format!("User \"mesh-remediation-{function}\" cannot")),
        "{refusal:?}"
    );
}

fn merge(patch: Value) -> Patch<Value> {
    Patch::Merge(patch)
}

fn params() -> PatchParams {
    PatchParams::default()
}

/// The checkout DestinationRule and VirtualService every function may act on, as stored.
async fn mesh_objects(cluster: &TestCluster) -> (Value, Value) {
    let mesh = Mesh::new(cluster);
    let rule = mesh
        .opted_in(
            Kind::DestinationRule,
            VS,
            json!({"host": "checkout",
                   "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}},
                   "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                               {"name": "v2", "labels": {"version": "v2"}}]}),
        )
        .await;
    let service = mesh
        .create(
            Kind::VirtualService,
            VS,
            true,
            json!({"auto-remediation.io/stable-subset": "v1"}),
            json!({"hosts": ["checkout"], "http": [
                {"name": "canary-by-header",
                 "match": [{"headers": {"x-canary": {"exact": "1"}}}],
                 "route": [{"destination": {"host": "checkout", "subset": "v2"}}]},
                {"name": "default", "route": [
                    {"destination": {"host": "checkout", "subset": "v1"}, "weight": 50},
                    {"destination": {"host": "checkout", "subset": "v2"}, "weight": 50}]}]}),
        )
        .await;
    (rule, service)
}

/// The header-matched canary route with `destination` added at weight 100 (and the canary at 0).
fn with_added(before: &Value, destination: Value) -> Value {
    let mut route = before["spec"]["http"][0].clone();
    route["route"][0]["weight"] = json!(0);
    route["route"]
        .as_array_mut()
        .expect("destinations")
        .push(json!({"destination": destination, "weight": 100}));
    route
}

fn with_added_extra(before: &Value) -> Value {
    let mut route = with_added(before, json!({"host": "checkout", "subset": "v1"}));
    route["route"][1]["headers"] = json!({"request": {"set": {"x-forwarded-host": "evil"}}});
    route
}

fn istio(cluster: &TestCluster, client: &kube::Client, kind: Kind) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), &cluster.namespace, &kind.resource())
}

/// What a function could have changed: labels, annotations and spec (not status, which a
/// real cluster's controllers keep writing, nor the resourceVersion that moves with it).
fn version(object: &Value) -> Value {
    json!([
        object["metadata"]["labels"],
        object["metadata"]["annotations"],
        object["spec"]
    ])
}

#[tokio::test]
async fn the_policies_are_installed_bound_to_deny_and_type_check_cleanly() {
    let cluster = TestCluster::start("lp-installed").await;
    // Checks the identity early, with its clear message, before anything else fails.
    cluster.identity_of("latency-restart").await;
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(cluster.client.clone());
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(cluster.client.clone());
    for name in [
        "mesh-remediation-latency-restart",
        "mesh-remediation-virtualservice-weights",
        "mesh-remediation-destinationrule-policy",
    ] {
        let policy = policies.get(name).await.unwrap_or_else(|e| {
            panic!("policy {name} missing (kubectl apply -f deploy/admission-policy.yaml): {e}")
        });
        let warnings = policy
            .status
            .and_then(|s| s.type_checking)
            .and_then(|t| t.expression_warnings)
            .unwrap_or_default();
        assert!(
            warnings.is_empty(),
            "{name}: the API server's type check warns: {warnings:?}"
        );
        let binding = bindings
            .get(name)
            .await
            .expect("binding")
            .spec
            .expect("spec");
        assert_eq!(binding.policy_name.as_deref(), Some(name));
        assert_eq!(binding.validation_actions, Some(vec!["Deny".to_owned()]));
    }
}

#[tokio::test]
async fn latency_restart_may_only_restart_opted_in_deployments() {
    let cluster = TestCluster::start("lp-restart").await;
    let client = cluster.identity_of("latency-restart").await;
    cluster.create_deployment(APP, true).await;
    cluster.create_deployment("ledger", false).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &cluster.namespace);
    let admin = cluster.deployments();
    admin
        .patch(
            APP,
            &params(),
            &merge(json!({"metadata": {"annotations": {"team": "payments"}}})),
        )
        .await
        .expect("an annotation set by its owner");
    let before = serde_json::to_value(cluster.deployment(APP).await).expect("json");

    let only_restart =
        "may change only spec.template.metadata.annotations[kubectl.kubernetes.io/restartedAt]";
    for (what, patch, allowed) in [
        (
            "change an image",
            json!({"spec": {"template": {"spec": {"containers": [
                {"name": "app", "image": "attacker.example/pause:evil"}]}}}}),
            only_restart,
        ),
        ("scale", json!({"spec": {"replicas": 0}}), only_restart),
        (
            "add a pod-template annotation",
            json!({"spec": {"template": {"metadata": {"annotations": {"sidecar.istio.io/inject": "false"}}}}}),
            only_restart,
        ),
        (
            "edit another annotation",
            json!({"metadata": {"annotations": {"team": "attackers"}}}),
            "may change only its own annotation auto-remediation.io/latency-restart",
        ),
        (
            "write another function's record",
            json!({"metadata": {"annotations": {"auto-remediation.io/error-rollback": "{}"}}}),
            "may change only its own annotation auto-remediation.io/latency-restart",
        ),
        (
            "remove the opt-in label",
            json!({"metadata": {"labels": {"auto_remediation": null}}}),
            "may not change labels",
        ),
    ] {
        let refusal = refused(deployments.patch(APP, &params(), &merge(patch)).await);
        assert_denied_by_policy(&refusal, allowed);
        let after = serde_json::to_value(cluster.deployment(APP).await).expect("json");
        assert_eq!(version(&after), version(&before), "{what}: nothing stored");
    }
    // A restart of a Deployment that is not opted in is refused by the cluster too.
    let refusal = refused(
        deployments
            .patch(
                "ledger",
                &params(),
                &merge(json!({"spec": {"template": {"metadata": {"annotations": {
                    "kubectl.kubernetes.io/restartedAt": "2026-12-03T00:00:00Z"}}}}})),
            )
            .await,
    );
    assert_denied_by_policy(
        &refusal,
        "only Deployments labelled auto_remediation=active",
    );

    // What RBAC refuses: Secrets, deleting, other kinds.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &cluster.namespace);
    assert_denied_by_rbac(
        &refused(secrets.list(&Default::default()).await),
        "latency-restart",
    );
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": "stolen"}})).expect("secret");
    assert_denied_by_rbac(
        &refused(secrets.create(&PostParams::default(), &secret).await),
        "latency-restart",
    );
    assert_denied_by_rbac(
        &refused(deployments.delete(APP, &DeleteParams::default()).await),
        "latency-restart",
    );
    mesh_objects(&cluster).await;
    assert_denied_by_rbac(
        &refused(
            istio(&cluster, &client, Kind::VirtualService)
                .patch(VS, &params(), &merge(json!({"spec": {"hosts": ["evil"]}})))
                .await,
        ),
        "latency-restart",
    );

    // The one change it documents is admitted, as a dry run and for real.
    let restart = json!({
        "metadata": {"annotations": {"auto-remediation.io/latency-restart": "{}"}},
        "spec": {"template": {"metadata": {"annotations": {
            "kubectl.kubernetes.io/restartedAt": "2026-12-03T00:00:00Z"}}}}});
    deployments
        .patch(
            APP,
            &PatchParams {
                dry_run: true,
                ..params()
            },
            &merge(restart.clone()),
        )
        .await
        .expect("dry-run restart admitted");
    deployments
        .patch(APP, &params(), &merge(restart))
        .await
        .expect("restart admitted");
}

#[tokio::test]
async fn weight_shifting_functions_may_only_change_route_weights() {
    let cluster = TestCluster::start("lp-weights").await;
    let (_, before) = mesh_objects(&cluster).await;
    let mesh = Mesh::new(&cluster);
    let only_weights = "may change only spec.http[*].route[*].weight";
    for function in ["error-rollback", "region-failover"] {
        let client = cluster.identity_of(function).await;
        let api = istio(&cluster, &client, Kind::VirtualService);
        let default_route = before["spec"]["http"][1].clone();
        let mut retargeted = default_route.clone();
        retargeted["route"][1]["destination"]["subset"] = json!("v1");
        let mut unmatched = before["spec"]["http"][0].clone();
        unmatched.as_object_mut().expect("route").remove("match");
        for (what, patch, allowed) in [
            (
                "delete a route",
                json!({"spec": {"http": [default_route.clone()]}}),
                only_weights.to_owned(),
            ),
            (
                "point a destination elsewhere",
                json!({"spec": {"http": [before["spec"]["http"][0].clone(), retargeted]}}),
                only_weights.to_owned(),
            ),
            (
                "drop a header match (the canary takes all traffic)",
                json!({"spec": {"http": [unmatched, default_route.clone()]}}),
                only_weights.to_owned(),
            ),
            (
                "change the hosts",
                json!({"spec": {"hosts": ["*"]}}),
                only_weights.to_owned(),
            ),
            (
                "add a destination no route has (traffic sent elsewhere)",
                json!({"spec": {"http": [with_added(&before, json!({"host": "collector.example.com"})), default_route.clone()]}}),
                only_weights.to_owned(),
            ),
            (
                "add a known destination with other fields (a header rewrite)",
                json!({"spec": {"http": [with_added_extra(&before), default_route.clone()]}}),
                only_weights.to_owned(),
            ),
            (
                "edit the stable-subset annotation",
                json!({"metadata": {"annotations": {"auto-remediation.io/stable-subset": "v2"}}}),
                format!("may change only its own annotation auto-remediation.io/{function}"),
            ),
        ] {
            let refusal = refused(api.patch(VS, &params(), &merge(patch)).await);
            assert_denied_by_policy(&refusal, &allowed);
            let after = mesh.get(Kind::VirtualService, VS).await;
            assert_eq!(
                version(&after),
                version(&before),
                "{function}: {what}: nothing stored"
            );
        }
        // The canary's header route gets the stable destination added: error-rollback only.
        let added = json!({"spec": {"http": [with_added(&before, json!({"host": "checkout", "subset": "v1"})), default_route.clone()]}});
        let answer = api
            .patch(
                VS,
                &PatchParams {
                    dry_run: true,
                    ..params()
                },
                &merge(added),
            )
            .await;
        if function == "error-rollback" {
            answer.expect("error-rollback may add the stable destination to a route");
        } else {
            assert_denied_by_policy(&refused(answer), only_weights);
        }
        assert_denied_by_rbac(
            &refused(api.delete(VS, &DeleteParams::default()).await),
            function,
        );
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &cluster.namespace);
        assert_denied_by_rbac(&refused(secrets.get("any").await), function);
    }
    // error-rollback may not touch DestinationRules at all (RBAC).
    let client = cluster.identity_of("error-rollback").await;
    assert_denied_by_rbac(
        &refused(
            istio(&cluster, &client, Kind::DestinationRule)
                .patch(VS, &params(), &merge(json!({"spec": {"subsets": []}})))
                .await,
        ),
        "error-rollback",
    );
}

#[tokio::test]
async fn traffic_policy_functions_may_only_change_their_own_policy_fields() {
    let cluster = TestCluster::start("lp-policy").await;
    let (before, _) = mesh_objects(&cluster).await;
    let mesh = Mesh::new(&cluster);
    for (function, allowed, own_field) in [
        (
            "db-circuit-break",
            "may change only connectionPool, outlierDetection and loadBalancer.localityLbSetting of a DestinationRule traffic policy",
            json!({"connectionPool": {"tcp": {"maxConnections": 10}}}),
        ),
        (
            "region-failover",
            "may change only loadBalancer.localityLbSetting and outlierDetection of a DestinationRule traffic policy",
            json!({"loadBalancer": {"localityLbSetting": {"failover": [{"from": "us-east-1", "to": "us-west-2"}]}}}),
        ),
    ] {
        let client = cluster.identity_of(function).await;
        let api = istio(&cluster, &client, Kind::DestinationRule);
        for (what, patch) in [
            (
                "turn mTLS off",
                json!({"spec": {"trafficPolicy": {"tls": {"mode": "DISABLE"}}}}),
            ),
            (
                "change the load-balancing algorithm",
                json!({"spec": {"trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}}}}),
            ),
            ("delete the subsets", json!({"spec": {"subsets": []}})),
            (
                "widen a subset (its labels)",
                json!({"spec": {"subsets": [{"name": "v1", "labels": {"app": "checkout"}},
                                            before["spec"]["subsets"][1].clone()]}}),
            ),
            (
                "turn mTLS off for one subset",
                json!({"spec": {"subsets": [
                    {"name": "v1", "labels": {"version": "v1"}, "trafficPolicy": {"tls": {"mode": "DISABLE"}}},
                    before["spec"]["subsets"][1].clone()]}}),
            ),
            (
                "turn mTLS off for one port",
                json!({"spec": {"trafficPolicy": {"portLevelSettings": [
                    {"port": {"number": 8080}, "tls": {"mode": "DISABLE"}}]}}}),
            ),
            ("change the host", json!({"spec": {"host": "payments"}})),
        ] {
            let refusal = refused(api.patch(VS, &params(), &merge(patch)).await);
            assert_denied_by_policy(&refusal, allowed);
            let after = mesh.get(Kind::DestinationRule, VS).await;
            assert_eq!(
                version(&after),
                version(&before),
                "{function}: {what}: nothing stored"
            );
        }
        // Its own field is admitted, at the top level and in a subset, dry run first
        // (stores nothing).
        let in_subset = json!({"spec": {"subsets": [
            {"name": "v1", "labels": {"version": "v1"}, "trafficPolicy": own_field.clone()},
            before["spec"]["subsets"][1].clone()]}});
        for own in [json!({"spec": {"trafficPolicy": own_field}}), in_subset] {
            api.patch(
                VS,
                &PatchParams {
                    dry_run: true,
                    ..params()
                },
                &merge(own),
            )
            .await
            .unwrap_or_else(|e| panic!("{function}: its own field is admitted: {e}"));
        }
        assert_eq!(
            version(&mesh.get(Kind::DestinationRule, VS).await),
            version(&before)
        );
    }
}

#[tokio::test]
async fn a_function_missing_a_rule_fails_clearly_and_changes_nothing() {
    // An identity bound to db-circuit-break's rules minus `patch` (say, a ClusterRole edited by
    // hand): the function reads, plans, is refused on the write, and reports that as a
    // failure naming the missing permission, not retried.
    let cluster = TestCluster::start("lp-missing").await;
    cluster.identity_of("db-circuit-break").await;
    let user = format!("lp-missing-{}", cluster.namespace);
    let roles: Api<Role> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "read-only-circuit-breaker"},
        "rules": [
            {"apiGroups": ["networking.istio.io"], "resources": ["destinationrules"], "verbs": ["get", "list"]},
            // The action budgets, spent before the change: granted, so the one rule
            // missing is the change itself.
            {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["mesh-remediation-budget"], "verbs": ["get", "patch"]},
            {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create"]}]}))
    .expect("role");
    roles
        .create(&PostParams::default(), &role)
        .await
        .expect("create role");
    let bindings: Api<RoleBinding> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "read-only-circuit-breaker"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-only-circuit-breaker"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]}))
    .expect("role binding");
    bindings
        .create(&PostParams::default(), &binding)
        .await
        .expect("create role binding");
    let before = Mesh::new(&cluster)
        .opted_in(Kind::DestinationRule, DB, json!({"host": "orders-db"}))
        .await;
    // The pause switches every function reads first, and the rules of every namespace
    // (which rule a client takes depends on all of them): cluster-wide, so a ClusterRole.
    let reads: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": format!("pause-reads-{user}")},
        "rules": [
            {"apiGroups": ["networking.istio.io"], "resources": ["destinationrules", "serviceentries"], "verbs": ["list"]},
            {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["mesh-remediation"], "verbs": ["get"]}]}))
    .expect("cluster role");
    Api::<ClusterRole>::all(cluster.client.clone())
        .create(&PostParams::default(), &reads)
        .await
        .expect("create cluster role");
    let bind: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": format!("pause-reads-{user}")},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": format!("pause-reads-{user}")},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]}))
    .expect("cluster role binding");
    Api::<ClusterRoleBinding>::all(cluster.client.clone())
        .create(&PostParams::default(), &bind)
        .await
        .expect("create cluster role binding");
    let client = cluster.impersonating(&user, &[]).await;
    let pipeline = pipeline_with(client, DbCircuitBreak::default(), &cluster.vars(&[]));
    let event = events::fresh("db-circuit-break-firing.json", &cluster.namespace);
    let report = pipeline
        .handle(&event, &Invocation::new("req-lp", None, None))
        .await;
    // Not retried (retrying cannot grant a permission), the real authorizer's refusal
    // quoted, and what to fix.
    let refusal = format!(
        "User \"{user}\" cannot patch resource \"destinationrules\" in API group \"networking.istio.io\""
    );
    assert_refused_saying(&report, &[&refusal, "deploy/rbac.yaml"]);
    let after = Mesh::new(&cluster).get(Kind::DestinationRule, DB).await;
    assert_eq!(version(&after), version(&before), "nothing stored");
    assert!(record(&after, DbCircuitBreak::default().name()).is_none());
}

#[tokio::test]
async fn each_function_may_spend_only_its_own_budget() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use mesh_remediation::guard::budget::BUDGET_CONFIGMAP;

    let cluster = TestCluster::start("lp-budget").await;
    let client = cluster.identity_of("latency-restart").await;
    let budgets: Api<ConfigMap> = Api::namespaced(client, &cluster.namespace);
    let spend = |key: &str| merge(json!({"data": {key: "[]"}}));

    budgets
        .patch(BUDGET_CONFIGMAP, &params(), &spend("latency-restart"))
        .await
        .expect("a function's own key is admitted");
    let other = refused(
        budgets
            .patch(BUDGET_CONFIGMAP, &params(), &spend("error-rollback"))
            .await,
    );
    assert_denied_by_policy(&other, "may change only its own key latency-restart");
    let labels = refused(
        budgets
            .patch(
                BUDGET_CONFIGMAP,
                &params(),
                &merge(json!({"metadata": {"labels": {"owner": "me"}}})),
            )
            .await,
    );
    assert_denied_by_policy(&labels, "may not change the labels or annotations");
    let pause = refused(
        budgets
            .patch("mesh-remediation", &params(), &spend("paused"))
            .await,
    );
    assert_denied_by_rbac(&pause, "latency-restart");

    let stored = Api::<ConfigMap>::namespaced(cluster.client.clone(), &cluster.namespace)
        .get(BUDGET_CONFIGMAP)
        .await
        .expect("the budget")
        .data
        .unwrap_or_default();
    assert_eq!(
        stored.keys().collect::<Vec<_>>(),
        ["latency-restart"],
        "only the function's own key was written"
    );
}
