//! Each function works with exactly the rules `deploy/rbac.yaml` grants its group, as the
//! real authorizer applies them: the fault proxy's request log shows every request it made
//! with its own token; none is refused, latency-restart uses every rule it is granted (so
//! the manifest grants nothing unused), and the Istio functions use only granted ones. A rule
//! taken away (the function's roles copied without it, bound to a user of the test's own) is a
//! clear configuration error that is not retried; without Events the change is still made.

use std::collections::BTreeSet;

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use lambda_runtime::{Context, LambdaEvent};
use mesh_remediation::lambda::Function;
use mesh_remediation::pipeline::{Invocation, Pipeline};
use mesh_remediation::remediation::region_failover::FailoverSettings;
use mesh_remediation::remediation::{
    DbCircuitBreak, ErrorRollback, LatencyRestart, RegionFailover, Remediation,
};
use mesh_remediation::report::{InvocationReport, OutcomeKind};
use remediation_testkit::cluster::NO_COOLDOWN;
use remediation_testkit::cluster::pipeline_with;
use remediation_testkit::mesh::{Kind, Mesh, assert_refused_saying, only, reason, version_subsets};
use remediation_testkit::{TestCluster, events};
use serde_json::{Value, json};

type Grant = (String, String, String);

const TARGET: &str = "checkout-v2";

/// The group (and user) a function's identity has.
fn group_of(function: &str) -> String {
    format!("mesh-remediation-{function}")
}

/// The rules bound to `group` on the server: (binding's namespace, or `None` for a
/// ClusterRoleBinding; the rules).
async fn rules_of(cluster: &TestCluster, group: &str) -> Vec<(Option<String>, Vec<PolicyRule>)> {
    let names_group = |subjects: &Option<Vec<Subject>>| {
        subjects
            .iter()
            .flatten()
            .any(|s| s.kind == "Group" && s.name == group)
    };
    let client = &cluster.client;
    let role_rules = |namespace: Option<String>, role: RoleRef| async move {
        let rules = if role.kind == "ClusterRole" {
            Api::<ClusterRole>::all(client.clone())
                .get(&role.name)
                .await
                .expect("cluster role")
                .rules
        } else {
            let ns = namespace.as_deref().expect("a Role is namespaced");
            Api::<Role>::namespaced(client.clone(), ns)
                .get(&role.name)
                .await
                .expect("role")
                .rules
        };
        (namespace, rules.unwrap_or_default())
    };
    let mut out = Vec::new();
    for binding in Api::<ClusterRoleBinding>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("cluster role bindings")
    {
        if names_group(&binding.subjects) {
            out.push(role_rules(None, binding.role_ref).await);
        }
    }
    for binding in Api::<RoleBinding>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("role bindings")
    {
        if names_group(&binding.subjects) {
            out.push(role_rules(binding.metadata.namespace.clone(), binding.role_ref).await);
        }
    }
    out
}

/// (verb, group, resource) of every rule bound to `group`.
async fn granted(cluster: &TestCluster, group: &str) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for (_, rules) in rules_of(cluster, group).await {
        for rule in rules {
            for api_group in rule.api_groups.iter().flatten() {
                for resource in rule.resources.iter().flatten() {
                    for verb in &rule.verbs {
                        out.insert((verb.clone(), api_group.clone(), resource.clone()));
                    }
                }
            }
        }
    }
    out
}

/// (verb, group, resource) of every request `user` sent through the proxy.
fn used_by(cluster: &TestCluster, user: &str) -> BTreeSet<Grant> {
    cluster
        .requests()
        .into_iter()
        .filter(|r| r.user == user)
        .filter_map(|r| r.grant())
        .collect()
}

fn assert_nothing_refused(cluster: &TestCluster) {
    let refused: Vec<_> = cluster
        .requests()
        .into_iter()
        .filter(|r| r.status == 403)
        .collect();
    assert!(
        refused.is_empty(),
        "the function needed more than its rules: {refused:#?}"
    );
}

/// Creates `object` through `api`.
async fn create<K>(api: Api<K>, object: &K) -> kube::Result<()>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.create(&PostParams::default(), object).await.map(drop)
}

/// A user of the test's own, bound to copies of `function`'s roles without `verb` on
/// `resource` in `api_group`; its client (the admin impersonating it).
async fn without_rule(
    cluster: &TestCluster,
    function: &str,
    (verb, api_group, resource): (&str, &str, &str),
) -> (String, kube::Client) {
    let user = format!("{}-without-{verb}-{resource}", cluster.namespace);
    let subject = Subject {
        kind: "User".into(),
        name: user.clone(),
        api_group: Some("rbac.authorization.k8s.io".into()),
        namespace: None,
    };
    for (i, (namespace, rules)) in rules_of(cluster, &group_of(function))
        .await
        .into_iter()
        .enumerate()
    {
        let rules: Vec<PolicyRule> = rules
            .into_iter()
            .map(|mut rule| {
                let matches = rule.api_groups.iter().flatten().any(|g| g == api_group)
                    && rule.resources.iter().flatten().any(|r| r == resource);
                if matches {
                    rule.verbs.retain(|v| v != verb);
                }
                rule
            })
            .filter(|rule| !rule.verbs.is_empty())
            .collect();
        let name = format!("{user}-{i}");
        let meta = ObjectMeta {
            name: Some(name.clone()),
            ..ObjectMeta::default()
        };
        let role_ref = RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: name.clone(),
        };
        let role = ClusterRole {
            metadata: meta.clone(),
            rules: Some(rules),
            ..ClusterRole::default()
        };
        create(Api::all(cluster.client.clone()), &role)
            .await
            .expect("copy of the role");
        let binding = RoleBinding {
            metadata: meta,
            role_ref,
            subjects: Some(vec![subject.clone()]),
        };
        let client = cluster.client.clone();
        let created = match namespace {
            Some(ns) => create(Api::namespaced(client, &ns), &binding).await,
            // The same binding, cluster-wide.
            None => {
                let RoleBinding {
                    metadata,
                    role_ref,
                    subjects,
                } = binding;
                let binding = ClusterRoleBinding {
                    metadata,
                    role_ref,
                    subjects,
                };
                create(Api::all(client), &binding).await
            }
        };
        created.expect("binding of the copy");
    }
    let client = cluster.impersonating(&user, &[]).await;
    (user, client)
}

/// One delivery, as its own Lambda invocation (a request id of its own: the same id would
/// be Lambda's retry of one invocation, which recognises its own earlier change).
async fn run<R: Remediation>(pipeline: &Pipeline<R>, event: &Value) -> InvocationReport {
    static INVOCATIONS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = INVOCATIONS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    pipeline
        .handle(
            event,
            &Invocation::new(&format!("req-rules-{n}"), None, None),
        )
        .await
}

#[tokio::test]
async fn latency_restart_works_with_exactly_its_rules_and_uses_every_one() {
    let cluster = TestCluster::start("rules-lr").await;
    cluster.create_deployment(TARGET, true).await;
    let function = LatencyRestart.name();
    let pipeline = pipeline_with(
        cluster.identity_of(function).await,
        LatencyRestart,
        &cluster.vars(&[]),
    );
    let before = cluster.generation(TARGET).await;
    cluster.clear_requests();

    // Every path: a drill (server-side dry run), the firing alert, a repeat (cooldown),
    // the resolved alert (recovery recorded on the object).
    let drill = run(
        &pipeline,
        &events::fresh("latency-restart-drill.json", &cluster.namespace),
    )
    .await;
    assert_eq!(only(&drill).outcome, OutcomeKind::DryRun, "{drill:#?}");
    let firing = events::fresh("latency-restart-firing.json", &cluster.namespace);
    let applied = run(&pipeline, &firing).await;
    assert_eq!(only(&applied).outcome, OutcomeKind::Applied, "{applied:#?}");
    let repeat = run(&pipeline, &firing).await;
    assert_eq!(only(&repeat).outcome, OutcomeKind::Skipped, "{repeat:#?}");
    let resolved = run(
        &pipeline,
        &events::fresh("latency-restart-resolved.json", &cluster.namespace),
    )
    .await;
    assert!(
        reason(only(&resolved)).contains("recovery recorded"),
        "{resolved:#?}"
    );

    // Two writes: the restart and the recovery record (a Deployment's generation counts
    // annotation changes too); the drill and the repeat wrote nothing.
    assert_eq!(
        cluster.generation(TARGET).await,
        before + 2,
        "one restart, one recovery record"
    );
    assert_nothing_refused(&cluster);
    assert_eq!(
        used_by(&cluster, &group_of(function)),
        granted(&cluster, &group_of(function)).await,
        "deploy/rbac.yaml grants exactly what latency-restart uses"
    );
}

#[tokio::test]
async fn a_missing_rule_is_a_clear_configuration_error_that_is_not_retried() {
    let cluster = TestCluster::start("rules-missing").await;
    cluster.create_deployment(TARGET, true).await;
    let before = cluster.generation(TARGET).await;
    let firing = events::fresh("latency-restart-firing.json", &cluster.namespace);
    for verb in ["patch", "get"] {
        let (user, client) =
            without_rule(&cluster, "latency-restart", (verb, "apps", "deployments")).await;
        let pipeline = pipeline_with(client.clone(), LatencyRestart, &cluster.vars(&[]));
        let report = run(&pipeline, &firing).await;
        // A 403 is not transient: not retried, the real authorizer's refusal quoted, called
        // a configuration error, and what to fix.
        let refusal = format!(
            "User \"{user}\" cannot {verb} resource \"deployments\" in API group \"apps\" in the namespace \"{}\"",
            cluster.namespace
        );
        let parts = [&refusal, "configuration error", "deploy/rbac.yaml"];
        assert_refused_saying(&report, &parts);
        // Lambda answers normally: retrying cannot grant a permission.
        let answer = Function::new(pipeline_with(client, LatencyRestart, &cluster.vars(&[])))
            .invoke(LambdaEvent::new(firing.clone(), Context::default()))
            .await
            .expect("a configuration error is answered, not retried");
        assert_eq!(answer["summary"]["failed"], 1, "{answer}");
        assert_eq!(
            cluster.generation(TARGET).await,
            before,
            "{verb}: nothing changed"
        );
    }

    // Without Events the change is still made and recorded on the object (the audit
    // Event is best effort); the refusal is the only one.
    let (_, client) = without_rule(
        &cluster,
        "latency-restart",
        ("create", "events.k8s.io", "events"),
    )
    .await;
    cluster.clear_requests();
    let pipeline = pipeline_with(client, LatencyRestart, &cluster.vars(&[]));
    let report = run(&pipeline, &firing).await;
    assert_eq!(only(&report).outcome, OutcomeKind::Applied, "{report:#?}");
    assert_eq!(cluster.generation(TARGET).await, before + 1);
    let refused: Vec<_> = cluster
        .requests()
        .into_iter()
        .filter(|r| r.status == 403)
        .collect();
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert!(refused[0].path.ends_with("/events"), "{refused:#?}");
}

/// Runs `remediation`'s firing `event` as the function's group; it must act, need no more
/// than its rules, and use only granted ones.
async fn istio_function_within_its_rules<R: Remediation>(
    cluster: &TestCluster,
    remediation: R,
    event: &Value,
) {
    let function = remediation.name();
    let group = group_of(function);
    let granted = granted(cluster, &group).await;
    assert!(
        !granted.is_empty(),
        "deploy/rbac.yaml binds rules to {group}"
    );
    let pipeline = pipeline_with(
        cluster.identity_of(function).await,
        remediation,
        &cluster.vars(&[]),
    );
    cluster.clear_requests();
    let report = run(&pipeline, event).await;
    assert_eq!(
        only(&report).outcome,
        OutcomeKind::Applied,
        "{function}: {report:#?}"
    );
    assert_nothing_refused(cluster);
    let used = used_by(cluster, &group);
    assert!(
        used.is_subset(&granted),
        "{function} used {used:?}, granted {granted:?}"
    );
    assert!(
        used.contains(&("create".into(), "events.k8s.io".into(), "events".into())),
        "{function} recorded its Event: {used:?}"
    );
}

#[tokio::test]
async fn error_rollback_works_within_its_rules() {
    let cluster = TestCluster::start("rules-er").await;
    let mesh = Mesh::new(&cluster);
    let subsets = version_subsets("checkout");
    mesh.not_opted_in(Kind::DestinationRule, "checkout", subsets)
        .await;
    let split = json!({"http": [{"route": [
        {"destination": {"host": "checkout", "subset": "v1"}, "weight": 50},
        {"destination": {"host": "checkout", "subset": "v2"}, "weight": 50},
    ]}]});
    let mut spec = split.clone();
    spec["hosts"] = json!(["checkout"]);
    mesh.create(
        Kind::VirtualService,
        "checkout",
        true,
        json!({"auto-remediation.io/stable-subset": "v1"}),
        spec,
    )
    .await;
    let event = events::fresh("error-rollback-firing.json", &cluster.namespace);
    istio_function_within_its_rules(&cluster, ErrorRollback, &event).await;

    // And without `patch` on VirtualServices: a clear, non-retryable configuration error.
    let (_, client) = without_rule(
        &cluster,
        "error-rollback",
        ("patch", "networking.istio.io", "virtualservices"),
    )
    .await;
    let pipeline = pipeline_with(client, ErrorRollback, &cluster.vars(&NO_COOLDOWN));
    mesh.edit_spec(Kind::VirtualService, "checkout", split)
        .await;
    let report = run(&pipeline, &event).await;
    assert_refused_saying(
        &report,
        &[
            "cannot patch resource \"virtualservices\"",
            "configuration error",
        ],
    );
}

#[tokio::test]
async fn db_circuit_break_works_within_its_rules() {
    let cluster = TestCluster::start("rules-cb").await;
    Mesh::new(&cluster)
        .opted_in(
            Kind::DestinationRule,
            "orders-db",
            json!({"host": format!("orders-db.{}.svc.cluster.local", cluster.namespace)}),
        )
        .await;
    let event = events::fresh("db-circuit-break-firing.json", &cluster.namespace);
    istio_function_within_its_rules(&cluster, DbCircuitBreak::default(), &event).await;
}

#[tokio::test]
async fn region_failover_works_within_its_rules() {
    let cluster = TestCluster::start("rules-rf").await;
    Mesh::new(&cluster)
        .region_split("frontend", &[50, 50])
        .await;
    let failover = RegionFailover::new(FailoverSettings::from_lookup(|_| None).expect("defaults"));
    let event = events::fresh("region-failover-firing.json", &cluster.namespace);
    istio_function_within_its_rules(&cluster, failover, &event).await;
}
