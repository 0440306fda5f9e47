//! `kube-standin`: an in-memory Kubernetes API server stand-in for integration tests.
//!
//! It speaks HTTP/1.1 JSON on plain http (127.0.0.1), serves core `v1` namespaces and
//! events, `events.k8s.io/v1` events, `apps/v1` deployments and the Istio
//! `networking.istio.io` `v1`/`v1beta1`/`v1alpha3` VirtualService, DestinationRule and
//! ServiceEntry kinds, and follows the real API's semantics: GET/LIST with label and
//! field selectors, create, replace, merge/JSON/strategic-merge patch, server-side
//! apply, delete, `resourceVersion` preconditions (409), `dryRun=All`,
//! `metadata.generation`, `Status` error bodies, and Istio CRD schema validation.
//! Stand-in-only extras live under `/_standin/`: fault injection, a request log and a
//! store dump. See the crate README for what is simplified.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let standin = kube_standin::StandIn::start().await?;
//! kube_standin::seed_demo_mesh(&standin);
//! let kubeconfig = standin.kubeconfig_yaml("shop");
//! # let _ = kubeconfig; Ok(()) }
//! ```

mod api;
mod demo;
mod faults;
mod resources;
pub mod schema;
mod selector;
mod status;
mod store;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

pub use demo::{demo_mesh_objects, seed_demo_mesh};
pub use faults::{Fault, FaultKind, FaultPlan, FaultSlot, RecordedRequest, plan_faults};
pub use schema::validate_istio;

use api::{HttpReq, HttpResp};
use store::{Entry, Owners, State};

/// Shared between the server tasks and the [`StandIn`] handle.
#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    addr: SocketAddr,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running stand-in API server. Dropping it (or [`StandIn::shutdown`]) stops it.
#[derive(Debug)]
pub struct StandIn {
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl StandIn {
    /// Start on `127.0.0.1` with a random free port.
    pub async fn start() -> std::io::Result<StandIn> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Start on `addr`. Must be called inside a Tokio runtime; the server runs as tasks on it.
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<StandIn> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            addr,
        });
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(serve(listener, shared.clone(), rx));
        Ok(StandIn {
            shared,
            shutdown: tx,
            task: Some(task),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// A kubeconfig (cluster `kube-standin`, token auth with a dummy token) pointing at [`StandIn::url`].
    pub fn kubeconfig_yaml(&self, namespace: &str) -> String {
        kubeconfig_for(&self.url(), namespace)
    }

    /// Insert `obj` as-is: `apiVersion`/`kind`/`metadata.namespace` (default `default`)
    /// decide where. Creates the namespace if missing; assigns `resourceVersion` and, when
    /// absent, `uid`, `creationTimestamp` and (Deployments, Istio kinds) `generation` (1). A Deployment seeded without
    /// `status` gets a settled status when rollout settling is on. No validation.
    ///
    /// # Panics
    /// If `apiVersion`/`kind` is not a served type or `metadata.name` is missing.
    pub fn seed(&self, obj: Value) {
        if let Err(e) = seed_into(&self.shared, obj) {
            panic!("kube-standin: cannot seed: {e}");
        }
    }

    /// The stored object as served at `api_version` (e.g. `networking.istio.io/v1beta1`).
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let (def, version) = resources::find_by_kind(api_version, kind)?;
        let st = self.shared.lock();
        st.objects
            .get(&store::key(def, namespace, name))
            .map(|e| api::present(def, &version, &e.obj))
    }

    /// Every stored object (namespaces included), in storage order.
    pub fn objects(&self) -> Vec<Value> {
        self.shared
            .lock()
            .objects
            .values()
            .map(|e| e.obj.clone())
            .collect()
    }

    /// The current global resourceVersion counter (moves on every stored write).
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// Add a fault rule (checked after the ones already present).
    pub fn add_fault(&self, fault: Fault) {
        self.shared.lock().faults.push(FaultSlot::new(fault));
    }

    /// Remove every fault rule.
    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }

    /// The request log (Kubernetes paths only), oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared
            .lock()
            .requests
            .iter()
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// Empty the request log.
    pub fn clear_requests(&self) {
        self.shared.lock().requests.clear();
    }

    /// Turn the simulated deployment controller on (default) or off. When on, every
    /// Deployment spec change is followed by a status write with
    /// `observedGeneration = generation` and all replica counts = `spec.replicas`.
    /// Off: status stays whatever was stored (a rollout "in progress").
    pub fn set_settle_rollouts(&self, on: bool) {
        self.shared.lock().settle = on;
    }

    /// Stop serving and wait for the accept loop to end.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

fn seed_into(shared: &Shared, obj: Value) -> Result<(), String> {
    let av = obj
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let kind = obj
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let Some((def, _)) = resources::find_by_kind(&av, &kind) else {
        return Err(format!("{av:?}/{kind:?} is not a served type"));
    };
    let Some(name) = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        return Err(format!("the {kind} has no metadata.name"));
    };
    let ns = def.namespaced.then(|| {
        obj.pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string()
    });
    let mut obj = obj;
    let mut st = shared.lock();
    if let Some(ns) = &ns {
        st.ensure_namespace(ns);
        obj["metadata"]["namespace"] = json!(ns);
    }
    let rv = st.next_rv();
    obj["metadata"]["resourceVersion"] = json!(rv.to_string());
    if obj.pointer("/metadata/uid").is_none() {
        obj["metadata"]["uid"] = json!(st.new_uid());
    }
    if obj.pointer("/metadata/creationTimestamp").is_none() {
        obj["metadata"]["creationTimestamp"] = json!(store::now_rfc3339());
    }
    if obj.pointer("/metadata/generation").is_none() && def.tracks_generation() {
        obj["metadata"]["generation"] = json!(1);
    }
    if def.is_deployment() && obj.get("status").is_none() && st.settle {
        api::settle_deployment(&mut obj);
    }
    let k = store::key(def, ns.as_deref(), &name);
    st.objects.insert(
        k,
        Entry {
            obj,
            owners: Owners::new(),
        },
    );
    Ok(())
}

/// A kubeconfig for `url` with context namespace `namespace` (a cluster admin's token).
pub fn kubeconfig_for(url: &str, namespace: &str) -> String {
    kubeconfig_with_token(url, namespace, "kube-standin-dummy-token")
}

/// A kubeconfig for `url` with context namespace `namespace` and bearer token `token`.
pub fn kubeconfig_with_token(url: &str, namespace: &str, token: &str) -> String {
    // JSON strings are valid YAML scalars: the token is quoted whatever it holds.
    let token = Value::String(token.to_owned());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kube-standin\n  cluster:\n    server: {url}\ncontexts:\n- name: kube-standin\n  context:\n    cluster: kube-standin\n    user: kube-standin\n    namespace: {namespace}\ncurrent-context: kube-standin\npreferences: {{}}\nusers:\n- name: kube-standin\n  user:\n    token: {token}\n"
    )
}

async fn serve(listener: TcpListener, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let (stream, _) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "kube-standin: accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Without TCP_NODELAY, keep-alive replies can wait ~40 ms (Nagle + delayed ACK).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::warn!(error = %e, "kube-standin: TCP_NODELAY failed");
        }
        let shared = shared.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let kill = Arc::new(Notify::new());
            let kill2 = kill.clone();
            let svc = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                let kill = kill2.clone();
                async move { Ok::<_, Infallible>(handle(shared, kill, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                r = conn => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "kube-standin: connection ended with an error");
                    }
                }
                _ = kill.notified() => {}
                _ = shutdown.changed() => {}
            }
        });
    }
}

fn response(resp: HttpResp) -> Response<Full<Bytes>> {
    let mut b = Response::builder().status(resp.code);
    let body = match resp.text {
        Some(t) => {
            b = b.header("content-type", "text/plain; charset=utf-8");
            Bytes::from_static(t.as_bytes())
        }
        None => {
            b = b.header("content-type", "application/json");
            Bytes::from(serde_json::to_vec(&resp.body).unwrap_or_default())
        }
    };
    if let Some(s) = resp.retry_after {
        b = b.header("retry-after", s.to_string());
    }
    for w in &resp.warnings {
        let escaped = w.replace('\\', "\\\\").replace('"', "\\\"");
        b = b.header("warning", format!("299 - \"{escaped}\""));
    }
    b.body(Full::new(body)).unwrap_or_else(|_| {
        let mut r = Response::new(Full::new(Bytes::from_static(b"{}")));
        *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
}

async fn handle(
    shared: Arc<Shared>,
    kill: Arc<Notify>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let bytes = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let method = parts.method.as_str().to_string();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or("").to_string();
    let header = |n: &str| {
        parts
            .headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let content_type = header("content-type");
    let user_agent = header("user-agent");
    // Any token may do anything here; the log keeps who claimed to send it.
    let user = header("authorization")
        .and_then(|a| a.strip_prefix("Bearer ").map(str::to_owned))
        .unwrap_or_default();
    let host = shared.addr.to_string();

    if path == "/_standin" || path.starts_with("/_standin/") {
        return response(admin(&shared, &method, &path, &bytes));
    }

    let body_json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    let (id, plan) = {
        let mut st = shared.lock();
        let id = st.record(RecordedRequest {
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            content_type: content_type.clone(),
            body: body_json,
            status: 0,
            user,
        });
        (id, st.plan_faults(&method, &path))
    };
    if plan.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(plan.latency_ms)).await;
    }
    let target = match api::parse_path(&path, &host) {
        Ok(api::Target::Res(t)) => Some(t),
        _ => None,
    };
    match plan.action {
        Some(FaultKind::Reset) => {
            kill.notify_one();
            std::future::pending::<()>().await;
        }
        Some(FaultKind::Hang) => std::future::pending::<()>().await,
        Some(FaultKind::ConflictBump) => {
            if let Some(t) = &target
                && let Some(name) = &t.name
            {
                let k = store::key(t.def, t.ns.as_deref(), name);
                shared.lock().bump(&k);
            }
        }
        Some(FaultKind::Status {
            code,
            retry_after_secs,
        }) => {
            let verb = match (
                method.as_str(),
                target.as_ref().is_some_and(|t| t.name.is_some()),
            ) {
                ("GET", false) => "list",
                ("GET", true) => "get",
                ("POST", _) => "create",
                ("PUT", _) => "update",
                ("PATCH", _) => "patch",
                ("DELETE", false) => "deletecollection",
                ("DELETE", true) => "delete",
                _ => "access",
            };
            let tgt = target
                .as_ref()
                .map(|t| (t.def, t.name.as_deref().unwrap_or("")));
            let ns = target.as_ref().and_then(|t| t.ns.as_deref());
            let retry = retry_after_secs.or(if code == 429 { Some(1) } else { None });
            let err = status::ApiError::for_code(code, tgt, verb, ns).with_retry_after(retry);
            shared.lock().finish_record(id, code);
            return response(HttpResp::err(err));
        }
        Some(FaultKind::Latency { .. } | FaultKind::DropResponse) | None => {}
    }
    let req = HttpReq {
        method: &method,
        path: &path,
        query: &query,
        content_type: content_type.as_deref(),
        user_agent: user_agent.as_deref(),
        body: &bytes,
        host: &host,
    };
    let resp = {
        let mut st = shared.lock();
        let resp = api::dispatch(&mut st, &req);
        st.finish_record(id, resp.code);
        resp
    };
    if plan.action == Some(FaultKind::DropResponse) {
        // Handled and stored; the answer never leaves.
        kill.notify_one();
        std::future::pending::<()>().await;
    }
    response(resp)
}

fn admin(shared: &Shared, method: &str, path: &str, body: &[u8]) -> HttpResp {
    let bad = |m: String| HttpResp::err(status::ApiError::bad_request(m));
    match (method, path.trim_end_matches('/')) {
        ("GET", "/_standin/requests") => {
            let reqs: Vec<RecordedRequest> = shared
                .lock()
                .requests
                .iter()
                .map(|(_, r)| r.clone())
                .collect();
            HttpResp::json(200, serde_json::to_value(reqs).unwrap_or_default())
        }
        ("DELETE", "/_standin/requests") => {
            shared.lock().requests.clear();
            HttpResp::json(200, json!({}))
        }
        ("GET", "/_standin/faults") => {
            let faults: Vec<Value> = shared
                .lock()
                .faults
                .iter()
                .map(|s| {
                    let (seen, fired) = s.counts();
                    json!({"fault": s.fault(), "seen": seen, "fired": fired})
                })
                .collect();
            HttpResp::json(200, Value::Array(faults))
        }
        ("POST", "/_standin/faults") => {
            let parsed: Result<Vec<Fault>, _> = serde_json::from_slice::<Fault>(body)
                .map(|f| vec![f])
                .or_else(|_| serde_json::from_slice::<Vec<Fault>>(body));
            match parsed {
                Ok(fs) => {
                    let mut st = shared.lock();
                    for fault in fs {
                        st.faults.push(FaultSlot::new(fault));
                    }
                    HttpResp::json(201, json!({"faults": st.faults.len()}))
                }
                Err(e) => bad(format!("invalid fault rule: {e}")),
            }
        }
        ("DELETE", "/_standin/faults") => {
            shared.lock().faults.clear();
            HttpResp::json(200, json!({}))
        }
        ("POST", "/_standin/seed") => {
            let objs = match serde_json::from_slice::<Value>(body) {
                Ok(Value::Array(a)) => a,
                Ok(v) => vec![v],
                Err(e) => return bad(format!("invalid object: {e}")),
            };
            for o in objs {
                if let Err(e) = seed_into(shared, o) {
                    return bad(e);
                }
            }
            HttpResp::json(201, json!({}))
        }
        ("GET", "/_standin/objects") => {
            let objs: Vec<Value> = shared
                .lock()
                .objects
                .values()
                .map(|e| e.obj.clone())
                .collect();
            HttpResp::json(200, Value::Array(objs))
        }
        ("GET", "/_standin/settings") => {
            let st = shared.lock();
            HttpResp::json(
                200,
                json!({"settle_rollouts": st.settle, "resource_version": st.rv}),
            )
        }
        ("POST" | "PUT" | "PATCH", "/_standin/settings") => {
            match serde_json::from_slice::<Value>(body) {
                Ok(v) => {
                    let mut st = shared.lock();
                    if let Some(b) = v.get("settle_rollouts").and_then(Value::as_bool) {
                        st.settle = b;
                    }
                    HttpResp::json(
                        200,
                        json!({"settle_rollouts": st.settle, "resource_version": st.rv}),
                    )
                }
                Err(e) => bad(format!("invalid settings: {e}")),
            }
        }
        _ => HttpResp::err(status::ApiError::unknown_path()),
    }
}
