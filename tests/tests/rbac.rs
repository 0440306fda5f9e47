//! Least privilege, enforced: the stand-in authorizes every request of a function against
//! the project's own RBAC manifest (`deploy/rbac.yaml`), the function identified by its
//! bearer token as a member of its group `mesh-remediation-<function>` (what the EKS access
//! entry maps its IAM role to). Each function must work with exactly its rules, use every
//! rule it is granted (so the manifest grants nothing unused), and fail clearly, without
//! retries, when a rule is missing.
//!
//! Stand-in only: it reads the stand-in's request log (which rules each function used).
//! The real RBAC authorizer and admission policies are tested in `least_privilege.rs`.

use std::collections::BTreeSet;

use kube_standin::{Attributes, RbacPolicy, StandIn};
use lambda_runtime::{Context, LambdaEvent};
use mesh_remediation::lambda::Function;
use mesh_remediation::pipeline::{Invocation, Pipeline};
use mesh_remediation::remediation::db_circuit_break::CircuitBreaker;
use mesh_remediation::remediation::region_failover::FailoverSettings;
use mesh_remediation::remediation::{
    DbCircuitBreak, ErrorRollback, LatencyRestart, RegionFailover, Remediation,
};
use mesh_remediation::report::{InvocationReport, OutcomeKind};
use remediation_testkit::cluster::{client_from, pipeline_with};
use remediation_testkit::events::workspace_root;
use remediation_testkit::mesh::{Kind, Mesh, only, reason};
use remediation_testkit::{TestCluster, events};
use serde_json::{Value, json};

const TARGET: &str = "checkout-v2";

type Grant = (String, String, String);

fn project_policy() -> RbacPolicy {
    RbacPolicy::from_file(&workspace_root().join("deploy/rbac.yaml"))
        .expect("deploy/rbac.yaml is a valid RBAC manifest")
}

fn role(function: &str) -> String {
    format!("mesh-remediation-{function}")
}

/// A pipeline whose client authenticates as `function`'s group.
async fn as_function<R: Remediation>(
    cluster: &TestCluster,
    standin: &StandIn,
    remediation: R,
    vars: &[(&str, &str)],
) -> Pipeline<R> {
    let path = std::env::temp_dir().join(format!(
        "kubeconfig-{}-{}.yaml",
        cluster.namespace,
        remediation.name()
    ));
    let token = format!("group:{}", role(remediation.name()));
    std::fs::write(
        &path,
        standin.kubeconfig_yaml_with_token(&cluster.namespace, &token),
    )
    .expect("write kubeconfig");
    let client = client_from(&path).await;
    pipeline_with(client, remediation, &cluster.vars(vars))
}

/// One delivery, as its own Lambda invocation (a request id of its own: the same id would
/// be Lambda's retry of one invocation, which recognises its own earlier change).
async fn run<R: Remediation>(pipeline: &Pipeline<R>, event: &Value) -> InvocationReport {
    static INVOCATIONS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = INVOCATIONS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    pipeline
        .handle(
            event,
            &Invocation::new(&format!("req-rbac-{n}"), None, None),
        )
        .await
}

/// (verb, group, resource) of every request `user` sent.
fn used_by(standin: &StandIn, user: &str) -> BTreeSet<Grant> {
    standin
        .requests()
        .into_iter()
        .filter(|r| r.user == user)
        .filter_map(|r| match r.attributes() {
            Attributes::Resource {
                verb,
                group,
                resource,
                subresource,
                ..
            } => Some((
                verb,
                group,
                match subresource {
                    Some(sub) => format!("{resource}/{sub}"),
                    None => resource,
                },
            )),
            Attributes::NonResource { .. } => None,
        })
        .collect()
}

fn assert_nothing_refused(standin: &StandIn) {
    let refused: Vec<_> = standin
        .requests()
        .into_iter()
        .filter(|r| r.status == 403)
        .collect();
    assert!(
        refused.is_empty(),
        "the function needed more than its rules: {refused:#?}"
    );
}

#[tokio::test]
async fn latency_restart_works_with_exactly_its_rules_and_uses_every_one() {
    let cluster = TestCluster::start_standin("rbac-lr").await;
    let standin = cluster.standin_server();
    cluster.create_deployment(TARGET, true).await;
    let policy = project_policy();
    let granted = policy.grants(&role("latency-restart"));
    standin.enforce_rbac(policy);
    let pipeline = as_function(&cluster, standin, LatencyRestart, &[]).await;
    let before = cluster.generation(TARGET).await;

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

    // Two writes: the restart and the recovery record. A Deployment's generation counts
    // annotation changes too (as a real API server's does); the drill and the repeat wrote nothing.
    assert_eq!(
        cluster.generation(TARGET).await,
        before + 2,
        "one restart, one recovery record"
    );
    let events = cluster.events_about(TARGET).await;
    let restarts = events.iter().filter(|e| e["action"] == "Restart").count();
    assert_eq!(
        restarts, 1,
        "one restart Event (and the recovery's): {events:#?}"
    );
    assert_nothing_refused(standin);
    assert_eq!(
        used_by(standin, &role("latency-restart")),
        granted,
        "deploy/rbac.yaml grants exactly what latency-restart uses"
    );
}

#[tokio::test]
async fn a_missing_rule_is_a_clear_configuration_error_that_is_not_retried() {
    let cluster = TestCluster::start_standin("rbac-missing").await;
    let standin = cluster.standin_server();
    cluster.create_deployment(TARGET, true).await;
    let before = cluster.generation(TARGET).await;
    let firing = events::fresh("latency-restart-firing.json", &cluster.namespace);
    for verb in ["patch", "get"] {
        standin.enforce_rbac(project_policy().without_verb(
            &role("latency-restart"),
            "apps",
            "deployments",
            verb,
        ));
        let pipeline = as_function(&cluster, standin, LatencyRestart, &[]).await;
        let report = run(&pipeline, &firing).await;
        let outcome = only(&report);
        assert_eq!(outcome.outcome, OutcomeKind::Failed, "{verb}: {outcome:#?}");
        assert!(
            !outcome.retryable,
            "{verb}: a 403 is not transient: {outcome:#?}"
        );
        let why = reason(outcome);
        assert!(
            why.contains(&format!(
                "User \"mesh-remediation-latency-restart\" cannot {verb} resource \"deployments\" in API group \"apps\" in the namespace \"{}\"",
                cluster.namespace
            )),
            "{verb}: the refusal is quoted: {why}"
        );
        assert!(why.contains("configuration error"), "{verb}: {why}");
        assert!(
            why.contains("deploy/rbac.yaml"),
            "{verb}: says what to fix: {why}"
        );
        // Lambda answers normally: retrying cannot grant a permission.
        let answer = Function::new(as_function(&cluster, standin, LatencyRestart, &[]).await)
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
    standin.clear_requests();
    standin.enforce_rbac(project_policy().without_verb(
        &role("latency-restart"),
        "events.k8s.io",
        "events",
        "create",
    ));
    let pipeline = as_function(&cluster, standin, LatencyRestart, &[]).await;
    let report = run(&pipeline, &firing).await;
    assert_eq!(only(&report).outcome, OutcomeKind::Applied, "{report:#?}");
    assert_eq!(cluster.generation(TARGET).await, before + 1);
    let refused: Vec<_> = standin
        .requests()
        .into_iter()
        .filter(|r| r.status == 403)
        .collect();
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert!(refused[0].path.ends_with("/events"), "{refused:#?}");
}

/// Runs `remediation`'s firing sample event as the function's group; it must act, need no
/// more than its rules, and use only granted ones.
async fn istio_function_within_its_rules<R: Remediation>(
    cluster: &TestCluster,
    remediation: R,
    event: &Value,
) {
    let standin = cluster.standin_server();
    let function = remediation.name();
    let policy = project_policy();
    let granted = policy.grants(&role(function));
    assert!(
        !granted.is_empty(),
        "deploy/rbac.yaml has a ClusterRole for {function}"
    );
    standin.enforce_rbac(policy);
    let pipeline = as_function(cluster, standin, remediation, &[]).await;
    let report = run(&pipeline, event).await;
    assert_eq!(
        only(&report).outcome,
        OutcomeKind::Applied,
        "{function}: {report:#?}"
    );
    assert_nothing_refused(standin);
    let used = used_by(standin, &role(function));
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
    let cluster = TestCluster::start_standin("rbac-er").await;
    let mesh = Mesh::new(&cluster);
    mesh.create(
        Kind::DestinationRule,
        "checkout",
        false,
        json!({}),
        json!({"host": "checkout", "subsets": [
            {"name": "v1", "labels": {"version": "v1"}},
            {"name": "v2", "labels": {"version": "v2"}},
        ]}),
    )
    .await;
    mesh.create(
        Kind::VirtualService,
        "checkout",
        true,
        json!({"auto-remediation.io/stable-subset": "v1"}),
        json!({"hosts": ["checkout"], "http": [{"route": [
            {"destination": {"host": "checkout", "subset": "v1"}, "weight": 50},
            {"destination": {"host": "checkout", "subset": "v2"}, "weight": 50},
        ]}]}),
    )
    .await;
    let event = events::fresh("error-rollback-firing.json", &cluster.namespace);
    istio_function_within_its_rules(&cluster, ErrorRollback, &event).await;

    // And without `patch` on VirtualServices: a clear, non-retryable configuration error.
    let standin = cluster.standin_server();
    standin.enforce_rbac(project_policy().without_verb(
        &role("error-rollback"),
        "networking.istio.io",
        "virtualservices",
        "patch",
    ));
    let pipeline = as_function(
        &cluster,
        standin,
        ErrorRollback,
        &[("COOLDOWN_SECONDS", "0"), ("ESCALATE_AFTER", "0")],
    )
    .await;
    mesh.edit_spec(
        Kind::VirtualService,
        "checkout",
        json!({"http": [{"route": [
            {"destination": {"host": "checkout", "subset": "v1"}, "weight": 50},
            {"destination": {"host": "checkout", "subset": "v2"}, "weight": 50},
        ]}]}),
    )
    .await;
    let report = run(&pipeline, &event).await;
    let outcome = only(&report);
    assert_eq!(outcome.outcome, OutcomeKind::Failed, "{outcome:#?}");
    assert!(!outcome.retryable, "{outcome:#?}");
    assert!(
        reason(outcome).contains("cannot patch resource \"virtualservices\""),
        "{outcome:#?}"
    );
    assert!(
        reason(outcome).contains("configuration error"),
        "{outcome:#?}"
    );
}

#[tokio::test]
async fn db_circuit_break_works_within_its_rules() {
    let cluster = TestCluster::start_standin("rbac-cb").await;
    Mesh::new(&cluster)
        .create(
            Kind::DestinationRule,
            "orders-db",
            true,
            json!({}),
            json!({"host": format!("orders-db.{}.svc.cluster.local", cluster.namespace)}),
        )
        .await;
    let breaker = DbCircuitBreak::new(CircuitBreaker::from_lookup(|_| None).expect("defaults"));
    let event = events::fresh("db-circuit-break-firing.json", &cluster.namespace);
    istio_function_within_its_rules(&cluster, breaker, &event).await;
}

#[tokio::test]
async fn region_failover_works_within_its_rules() {
    let cluster = TestCluster::start_standin("rbac-rf").await;
    let region = |r: &str| json!({"topology.kubernetes.io/region": r});
    Mesh::new(&cluster)
        .subset_split(
            "frontend",
            &[
                ("east", region("us-east-1"), 50),
                ("west", region("us-west-2"), 50),
            ],
            json!({}),
            json!({"hosts": ["frontend"]}),
        )
        .await;
    let failover = RegionFailover::new(FailoverSettings::from_lookup(|_| None).expect("defaults"));
    let event = events::fresh("region-failover-firing.json", &cluster.namespace);
    istio_function_within_its_rules(&cluster, failover, &event).await;
}
