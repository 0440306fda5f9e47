//! Istio objects in the test cluster, and regional health endpoints to check.
//!
//! Objects go through the Kubernetes API (`DynamicObject`), so the same tests run on a
//! real cluster with Istio's CRDs installed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::fault_proxy::{Fault, RecordedRequest};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use lambda_runtime::{Context, LambdaEvent};
use mesh_remediation::cluster::record::{ActionRecord, FIELD_MANAGER};
use mesh_remediation::lambda::Function;
use mesh_remediation::remediation::Remediation;
use mesh_remediation::remediation::istio;
use mesh_remediation::report::{InvocationReport, Outcome, OutcomeKind};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::TestCluster;
use crate::cluster::config;

/// The Istio kinds the remediations write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `networking.istio.io` VirtualService.
    VirtualService,
    /// `networking.istio.io` DestinationRule.
    DestinationRule,
    /// `networking.istio.io` ServiceEntry (a database outside the cluster).
    ServiceEntry,
}

impl Kind {
    /// The resource at the version the functions use by default.
    pub fn resource(self) -> ApiResource {
        let config = config(&[]);
        match self {
            Kind::VirtualService => istio::virtual_service(&config),
            Kind::DestinationRule => istio::destination_rule(&config),
            Kind::ServiceEntry => {
                let mut resource = istio::destination_rule(&config);
                resource.kind = "ServiceEntry".into();
                resource.plural = "serviceentries".into();
                resource
            }
        }
    }

    /// The kind's name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::ServiceEntry => "ServiceEntry",
        }
    }
}

/// The Istio objects of one namespace of a test's cluster.
pub struct Mesh<'a> {
    cluster: &'a TestCluster,
    namespace: &'a str,
}

impl<'a> Mesh<'a> {
    /// The mesh of `cluster`'s test namespace.
    pub fn new(cluster: &'a TestCluster) -> Self {
        Mesh::in_namespace(cluster, &cluster.namespace)
    }

    /// The mesh of another namespace of `cluster` (a client team's, say).
    pub fn in_namespace(cluster: &'a TestCluster, namespace: &'a str) -> Self {
        Mesh { cluster, namespace }
    }

    /// The API for one kind in the namespace.
    pub fn api(&self, kind: Kind) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.cluster.client.clone(),
            self.namespace,
            &kind.resource(),
        )
    }

    /// Creates an opted-in object of `kind` named `name` with `spec` and no annotations.
    /// Returns it as stored.
    pub async fn opted_in(&self, kind: Kind, name: &str, spec: Value) -> Value {
        self.create(kind, name, true, json!({}), spec).await
    }

    /// Creates an object the functions may not change (not opted in), with `spec` and no
    /// annotations. Returns it as stored.
    pub async fn not_opted_in(&self, kind: Kind, name: &str, spec: Value) -> Value {
        self.create(kind, name, false, json!({}), spec).await
    }

    /// The spec of every stored object of `kinds` (JSON text, keys sorted), kind by kind,
    /// by name: to compare all before and after.
    pub async fn specs(&self, kinds: &[Kind]) -> Vec<String> {
        let mut out = Vec::new();
        for kind in kinds {
            let list = self.api(*kind).list(&Default::default()).await;
            for object in list.expect("list").items {
                out.push(spec_text(&serde_json::to_value(object).expect("json")));
            }
        }
        out
    }

    /// Creates an object of `kind` named `name` with `spec`, opted in or not, with
    /// extra `annotations`. Returns it as stored.
    pub async fn create(
        &self,
        kind: Kind,
        name: &str,
        opted_in: bool,
        annotations: Value,
        spec: Value,
    ) -> Value {
        let resource = kind.resource();
        let labels = if opted_in {
            json!({"auto_remediation": "active"})
        } else {
            json!({})
        };
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": resource.api_version,
            "kind": resource.kind,
            "metadata": {"name": name, "namespace": self.namespace,
                         "labels": labels, "annotations": annotations},
            "spec": spec,
        }))
        .expect("object");
        let created = self
            .api(kind)
            .create(&PostParams::default(), &object)
            .await
            .unwrap_or_else(|err| panic!("create {} {name}: {err}", kind.name()));
        serde_json::to_value(created).expect("json")
    }

    /// An opted-in DestinationRule `name` (host `name`) with `subsets` (name, labels,
    /// weight), and an opted-in VirtualService `name` with `annotations` that splits one HTTP
    /// route between them by weight; `spec` holds the VirtualService's other fields (`hosts`,
    /// `gateways`, ...). Returns the VirtualService as stored.
    pub async fn subset_split(
        &self,
        name: &str,
        subsets: &[(&str, Value, i64)],
        annotations: Value,
        mut spec: Value,
    ) -> Value {
        let rule_subsets: Vec<Value> = subsets
            .iter()
            .map(|(subset, labels, _)| json!({"name": subset, "labels": labels}))
            .collect();
        let route: Vec<Value> = subsets
            .iter()
            .map(|(subset, _, weight)| {
                json!({"destination": {"host": name, "subset": subset}, "weight": weight})
            })
            .collect();
        spec["http"] = json!([{ "route": route }]);
        let rule = json!({"host": name, "subsets": rule_subsets});
        self.rule_and_service(name, true, rule, annotations, spec)
            .await
    }

    /// [`Mesh::subset_split`] of `name` (hosts `[name]`, no annotations) over the first
    /// `weights.len()` of [`REGION_SUBSETS`], with those weights.
    pub async fn region_split(&self, name: &str, weights: &[i64]) -> Value {
        let subsets: Vec<(&str, Value, i64)> = REGION_SUBSETS
            .iter()
            .zip(weights)
            .map(|((subset, region), weight)| {
                let labels = json!({"topology.kubernetes.io/region": region});
                (*subset, labels, *weight)
            })
            .collect();
        self.subset_split(name, &subsets, json!({}), json!({"hosts": [name]}))
            .await
    }

    /// A DestinationRule `name` with the spec `rule` and a VirtualService `name` with
    /// `annotations` and the spec `service`, both opted in or neither. Returns the
    /// VirtualService as stored.
    pub async fn rule_and_service(
        &self,
        name: &str,
        opted_in: bool,
        rule: Value,
        annotations: Value,
        service: Value,
    ) -> Value {
        self.create(Kind::DestinationRule, name, opted_in, json!({}), rule)
            .await;
        self.create(Kind::VirtualService, name, opted_in, annotations, service)
            .await
    }

    /// The object as stored, as JSON.
    pub async fn get(&self, kind: Kind, name: &str) -> Value {
        let object = self
            .api(kind)
            .get(name)
            .await
            .unwrap_or_else(|err| panic!("get {} {name}: {err}", kind.name()));
        serde_json::to_value(object).expect("json")
    }

    /// Someone else edits the object (a merge patch of its spec).
    pub async fn edit_spec(&self, kind: Kind, name: &str, spec_patch: Value) {
        self.api(kind)
            .patch(
                name,
                &PatchParams::apply("someone-else"),
                &Patch::Merge(&json!({ "spec": spec_patch })),
            )
            .await
            .unwrap_or_else(|err| panic!("edit {} {name}: {err}", kind.name()));
    }
}

/// The regional subsets of the tests' meshes: (subset, `topology.kubernetes.io/region`).
pub const REGION_SUBSETS: [(&str, &str); 3] = [
    ("east", "us-east-1"),
    ("west", "us-west-2"),
    ("eu", "eu-west-1"),
];

/// The JSON text of an object's spec (keys sorted), for byte-for-byte comparisons.
pub fn spec_text(object: &Value) -> String {
    serde_json::to_string(&object["spec"]).expect("spec serialises")
}

/// Asserts `outcome` is a skip whose reason starts with `prefix` (the kind of skip:
/// "cooldown", "duplicate", "resolved", ...).
pub fn assert_skipped_for(outcome: &Outcome, prefix: &str) {
    assert_eq!(outcome.outcome, OutcomeKind::Skipped, "{outcome:#?}");
    assert!(
        reason(outcome).starts_with(prefix),
        "a skip for {prefix:?} expected: {outcome:#?}"
    );
}

/// Asserts `outcome` is a skip whose reason says `text`.
pub fn assert_skipped_saying(outcome: &Outcome, text: &str) {
    assert_eq!(outcome.outcome, OutcomeKind::Skipped, "{outcome:#?}");
    assert!(
        reason(outcome).contains(text),
        "a skip saying {text:?} expected: {outcome:#?}"
    );
}

/// Asserts `report`'s one outcome is of `kind` and its reason says each of `parts`; returns it.
pub fn assert_outcome_saying<'a>(
    report: &'a InvocationReport,
    kind: OutcomeKind,
    parts: &[&str],
) -> &'a Outcome {
    let outcome = only_of_kind(report, kind);
    for part in parts {
        assert!(
            reason(outcome).contains(part),
            "{part:?} not in: {outcome:#?}"
        );
    }
    outcome
}

/// Asserts `report`'s one outcome is a failure whose reason says each of `parts`.
pub fn assert_failed_saying(report: &InvocationReport, parts: &[&str]) {
    assert_outcome_saying(report, OutcomeKind::Failed, parts);
}

/// Asserts `report`'s one outcome is a failure to retry (the cause may pass) whose reason
/// says each of `parts`.
pub fn assert_retryable_saying(report: &InvocationReport, parts: &[&str]) {
    assert_failed_saying(report, parts);
    assert!(only(report).retryable, "{report:#?}");
}

/// Hands `event` to the Lambda handler `function` and asserts the invocation fails with the
/// retryable error type, saying it failed transiently: Lambda then retries it.
pub async fn assert_invocation_fails_transiently<R: Remediation>(
    function: &Function<R>,
    event: Value,
) {
    let err = function
        .invoke(LambdaEvent::new(event, Context::default()))
        .await
        .expect_err("a transient failure must fail the invocation so Lambda retries it");
    assert_eq!(err.error_type(), "MeshRemediation.Retryable", "{err}");
    assert!(err.to_string().contains("failed transiently"), "{err}");
}

/// Asserts `report`'s one outcome hands the alert to a person and its reason says each of
/// `parts`; returns it.
pub fn assert_escalated_saying<'a>(report: &'a InvocationReport, parts: &[&str]) -> &'a Outcome {
    assert_outcome_saying(report, OutcomeKind::Escalated, parts)
}

/// Asserts `report`'s one outcome is a failure not to retry (retrying cannot help) whose
/// reason says each of `parts`.
pub fn assert_refused_saying(report: &InvocationReport, parts: &[&str]) {
    assert_failed_saying(report, parts);
    assert!(!only(report).retryable, "{report:#?}");
}

/// Asserts the functions' writes among `requests` (those under their field manager) each
/// asked the server to refuse unknown fields (`fieldValidation=Strict`), and that there was
/// one: the real server then judged every change against its CRD schema, and the object read
/// back is the whole change, not what was left after the server's default silent pruning.
pub fn assert_strict_writes(requests: &[RecordedRequest]) {
    let writes: Vec<&RecordedRequest> = requests
        .iter()
        .filter(|r| {
            r.method == "PATCH" && r.query_param("fieldManager").as_deref() == Some(FIELD_MANAGER)
        })
        .collect();
    assert!(!writes.is_empty(), "no write by the functions was seen");
    for write in writes {
        assert_eq!(
            write.query_param("fieldValidation").as_deref(),
            Some("Strict"),
            "PATCH {}?{}",
            write.path,
            write.query
        );
    }
}

/// A local HTTP health endpoint for one region: answers every request with a settable
/// status after a settable delay, counting requests. `TCP_NODELAY` is set so replies
/// are not held back by Nagle's algorithm.
pub struct HealthEndpoint {
    url: String,
    status: Arc<AtomicU16>,
    delay_ms: Arc<AtomicU64>,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl HealthEndpoint {
    /// Starts on 127.0.0.1 answering `status`.
    pub async fn start(status: u16) -> HealthEndpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/healthz", listener.local_addr().expect("addr"));
        let status = Arc::new(AtomicU16::new(status));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let hits = Arc::new(AtomicUsize::new(0));
        let (s, d, h) = (status.clone(), delay_ms.clone(), hits.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve(stream, s.clone(), d.clone(), h.clone()));
            }
        });
        HealthEndpoint {
            url,
            status,
            delay_ms,
            hits,
            task,
        }
    }

    /// The URL to put in `REGION_HEALTH_URLS`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Changes the status answered from now on.
    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// Delays every answer (to exceed `HEALTH_CHECK_TIMEOUT_MS`).
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms.store(
            u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }

    /// Requests answered or started so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for HealthEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut stream: tokio::net::TcpStream,
    status: Arc<AtomicU16>,
    delay_ms: Arc<AtomicU64>,
    hits: Arc<AtomicUsize>,
) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        // One request per header block; bodies are not expected on GET.
        while !buffer.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        let end = buffer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(buffer.len(), |p| p + 4);
        buffer.drain(..end);
        hits.fetch_add(1, Ordering::SeqCst);
        let delay = delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let code = status.load(Ordering::SeqCst);
        let body = if (200..300).contains(&code) {
            "ok"
        } else {
            "unhealthy"
        };
        let reply = format!(
            "HTTP/1.1 {code} Status\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// The one outcome of a report.
pub fn only(report: &InvocationReport) -> &Outcome {
    assert_eq!(report.outcomes.len(), 1, "{report:#?}");
    &report.outcomes[0]
}

/// An outcome's reason, or `""`.
pub fn reason(outcome: &Outcome) -> &str {
    outcome.reason.as_deref().unwrap_or_default()
}

/// The action record of `remediation` on a stored object.
pub fn record(object: &Value, remediation: &str) -> Option<ActionRecord> {
    let annotations: Option<BTreeMap<String, String>> =
        serde_json::from_value(object["metadata"]["annotations"].clone()).ok();
    ActionRecord::from_annotations(annotations.as_ref(), remediation).expect("readable record")
}

/// Asserts `record` holds only the first HTTP route's destinations, as they were
/// (`before`) and as the change left them (`after`): what a weight shift records.
pub fn assert_first_route_recorded(record: &ActionRecord, before: &Value, after: &Value) {
    let first_route =
        |object: &Value| json!({"httpRoutes": {"0": object["spec"]["http"][0]["route"]}});
    assert_eq!(record.previous, Some(first_route(before)));
    assert_eq!(record.applied, Some(first_route(after)));
}

/// A DestinationRule spec for `host` with the subsets `v1` and `v2`, by the `version` label.
pub fn version_subsets(host: &str) -> Value {
    json!({"host": host, "subsets": [
        {"name": "v1", "labels": {"version": "v1"}},
        {"name": "v2", "labels": {"version": "v2"}},
    ]})
}

/// `report`'s one outcome, asserted to be of `kind`.
pub fn only_of_kind(report: &InvocationReport, kind: OutcomeKind) -> &Outcome {
    let outcome = only(report);
    assert_eq!(outcome.outcome, kind, "{outcome:#?}");
    outcome
}

/// Asserts the request log holds exactly one PATCH, a server-side dry run whose body is
/// the reported `patch`.
pub fn assert_one_dry_run_patch(cluster: &TestCluster, patch: &Value) {
    let patches: Vec<_> = cluster
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .collect();
    assert_eq!(patches.len(), 1, "{patches:#?}");
    assert!(
        patches[0].is_dry_run(),
        "server-side dry run: {:?}",
        patches[0].query
    );
    assert_eq!(
        &patches[0].body, patch,
        "the reported patch is the one sent"
    );
    assert_eq!(patches[0].status, 200);
}

/// Runs the same event through two invocations at once; the object's first two writes
/// are held a moment so both read it before either write lands (see [`hold_writes`]).
pub async fn race<R: Remediation>(
    cluster: &TestCluster,
    kind: Kind,
    name: &str,
    remediation: impl Fn() -> R,
    event: &Value,
) -> (InvocationReport, InvocationReport) {
    hold_writes(cluster, kind, name);
    tokio::join!(
        cluster.invoke(remediation(), &[], event),
        cluster.invoke(remediation(), &[], event)
    )
}

/// Asserts one of two racing invocations acted and the other stood down on the record
/// (cooldown) after its write was refused with 409, as the fault proxy's log shows.
pub fn assert_one_winner(cluster: &TestCluster, a: &InvocationReport, b: &InvocationReport) {
    let mut got = vec![only(a).outcome, only(b).outcome];
    got.sort();
    assert_eq!(
        got,
        vec![OutcomeKind::Applied, OutcomeKind::Skipped],
        "{a:#?} {b:#?}"
    );
    let loser = if only(a).outcome == OutcomeKind::Skipped {
        only(a)
    } else {
        only(b)
    };
    assert!(reason(loser).contains("cooldown"), "{loser:#?}");
    let conflicts = cluster
        .requests()
        .iter()
        // The budget ConfigMap's guarded writes race too: only the object's count.
        .filter(|r| r.method == "PATCH" && !r.path.contains("/configmaps/") && r.status == 409)
        .count();
    assert_eq!(
        conflicts, 1,
        "the loser's write must have been refused by the precondition"
    );
}

/// Holds the first two writes of one object a moment, so two racing invocations both
/// read it before either write lands and the `resourceVersion` precondition decides the
/// race, however the test threads are scheduled.
fn hold_writes(cluster: &TestCluster, kind: Kind, name: &str) {
    let path = format!("/{}/{name}", kind.resource().plural);
    cluster.faults().add_fault(
        Fault::latency(300)
            .method("PATCH")
            .path_contains(&path)
            .times(2),
    );
}
