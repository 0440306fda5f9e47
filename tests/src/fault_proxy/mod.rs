//! A fault-injecting proxy in front of the real kube-apiserver: what a real server cannot be
//! made to do on demand (latency, 5xx, 429 with `Retry-After`, connection resets, lost
//! answers, hangs, a competing write just before ours), and the log of every request a
//! function sent. Everything else is the real server's: storage, validation, RBAC (each
//! request is forwarded with the caller's own bearer token), admission policies, conflicts.
//!
//! The proxy listens on plain HTTP on loopback and forwards over TLS to the server of the
//! admin kubeconfig, trusting its CA.

mod faults;
mod status;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use kube::config::Kubeconfig;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

pub use faults::{Fault, FaultKind, RecordedRequest};
use faults::{FaultSlot, plan_faults};

/// The label a [`FaultKind::ConflictBump`] writes: someone else's change. A label, not an
/// annotation: the real server bumps a Deployment's `metadata.generation` for a change of
/// its annotations too (they are copied to its ReplicaSets), which tests read as a rollout.
pub const COMPETING_WRITE: &str = "test.mesh-remediation.io/competing-write";

/// Where requests go, and who sends them.
struct Upstream {
    server: String,
    client: reqwest::Client,
    admin_token: String,
    /// Bearer token -> kubeconfig user, for the request log.
    users: HashMap<String, String>,
}

#[derive(Default)]
struct State {
    faults: Vec<FaultSlot>,
    requests: Vec<RecordedRequest>,
    /// Tokens the proxy accepts for a user of the cluster, as the authenticator in front of
    /// a managed cluster does (EKS maps an IAM identity's token to a Kubernetes user).
    accepted: Vec<(Token, Credentials)>,
}

/// A bearer token the cluster itself does not know.
#[derive(Debug, Clone)]
pub enum Token {
    /// This exact token.
    Exact(String),
    /// An EKS token for this cluster: `k8s-aws-v1.` and the base64url of a presigned STS
    /// `GetCallerIdentity` URL that signs the header `x-k8s-aws-id` (the cluster's name is
    /// that header's value, which the URL cannot show).
    Eks,
}

impl Token {
    fn matches(&self, token: &str) -> bool {
        match self {
            Token::Exact(t) => t == token,
            Token::Eks => token
                .strip_prefix("k8s-aws-v1.")
                .and_then(|b| {
                    base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(b)
                        .ok()
                })
                .and_then(|url| String::from_utf8(url).ok())
                .is_some_and(|url| {
                    url.contains("Action=GetCallerIdentity")
                        && url.contains("X-Amz-Signature=")
                        && url.to_ascii_lowercase().contains("x-k8s-aws-id")
                }),
        }
    }
}

struct Shared {
    upstream: Upstream,
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running proxy; it stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _shutdown: watch::Sender<bool>,
}

/// A kubeconfig's server, CA and bearer token (the test control plane's are all tokens).
#[derive(Clone)]
pub struct Credentials {
    /// The API server's URL.
    pub server: String,
    /// The PEM of the CA that signed the server's certificate (none for plain HTTP).
    pub ca_pem: Option<Vec<u8>>,
    /// The kubeconfig's user.
    pub user: String,
    /// Its bearer token.
    pub token: String,
}

/// The body of the kubeconfig entry (context, cluster or user) called `name`, of `entries`
/// as (name, body).
fn named<'a, T: Clone + 'a>(
    entries: impl IntoIterator<Item = (&'a String, &'a Option<T>)>,
    name: &str,
    what: &str,
) -> T {
    entries
        .into_iter()
        .find(|(entry, _)| *entry == name)
        .and_then(|(_, body)| body.clone())
        .unwrap_or_else(|| panic!("the kubeconfig's {what} {name}"))
}

impl Credentials {
    /// Reads the current context of the kubeconfig at `path`.
    pub fn read(path: &Path) -> Credentials {
        let config = Kubeconfig::read_from(path).expect("kubeconfig");
        let current = config.current_context.clone().expect("a current context");
        let contexts = config.contexts.iter().map(|c| (&c.name, &c.context));
        let context = named(contexts, &current, "context");
        let clusters = config.clusters.iter().map(|c| (&c.name, &c.cluster));
        let cluster = named(clusters, &context.cluster, "cluster");
        let user = context.user.clone().expect("the context's user");
        let users = config.auth_infos.iter().map(|a| (&a.name, &a.auth_info));
        let auth = named(users, &user, "user");
        let token = auth.token.expect("a bearer token");
        Credentials {
            server: cluster.server.expect("server"),
            ca_pem: cluster.certificate_authority_data.map(|ca| {
                base64::engine::general_purpose::STANDARD
                    .decode(ca.trim())
                    .expect("base64 CA")
            }),
            user,
            token: secrecy_expose(&token),
        }
    }

    /// A kubeconfig for the same user, through a proxy at `url`.
    pub fn kubeconfig_via(&self, url: &str, namespace: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: proxied\n  cluster:\n    server: {url}\ncontexts:\n- name: proxied\n  context:\n    cluster: proxied\n    user: {user}\n    namespace: {namespace}\ncurrent-context: proxied\nusers:\n- name: {user}\n  user:\n    token: {token}\n",
            user = self.user,
            token = self.token,
        )
    }
}

fn secrecy_expose(token: &secrecy::SecretString) -> String {
    use secrecy::ExposeSecret as _;
    token.expose_secret().to_owned()
}

impl FaultProxy {
    /// Starts a proxy to the server of `admin`, logging requests as sent by the users of
    /// `admin` and `others`.
    pub async fn start(admin: &Credentials, others: &[&Credentials]) -> FaultProxy {
        let mut client = reqwest::Client::builder().no_proxy();
        if let Some(pem) = &admin.ca_pem {
            client = client
                .add_root_certificate(reqwest::Certificate::from_pem(pem).expect("CA certificate"));
        }
        let client = client.build().expect("HTTPS client");
        let users = std::iter::once(admin)
            .chain(others.iter().copied())
            .map(|c| (c.token.clone(), c.user.clone()))
            .collect();
        let shared = Arc::new(Shared {
            upstream: Upstream {
                server: admin.server.trim_end_matches('/').to_owned(),
                client,
                admin_token: admin.token.clone(),
                users,
            },
            state: Mutex::default(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let (shutdown, stop) = watch::channel(false);
        tokio::spawn(serve(listener, shared.clone(), stop));
        FaultProxy {
            addr,
            shared,
            _shutdown: shutdown,
        }
    }

    /// The loopback address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds a fault rule (rules apply in the order added).
    pub fn add_fault(&self, fault: Fault) {
        self.shared.lock().faults.push(FaultSlot::new(fault));
    }

    /// Accepts `token` as `user` (its token replaces it on the way to the server).
    pub fn accept(&self, token: Token, user: Credentials) {
        self.shared.lock().accepted.push((token, user));
    }

    /// Removes every fault rule.
    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }

    /// Every request so far, in the order received.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// Forgets the requests so far.
    pub fn clear_requests(&self) {
        self.shared.lock().requests.clear();
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => return,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        // Without TCP_NODELAY, keep-alive replies can wait ~40 ms (Nagle + delayed ACK).
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            // A fault that closes the connection without an answer notifies `kill`.
            let kill = Arc::new(Notify::new());
            let killer = kill.clone();
            let service = hyper::service::service_fn(move |request| {
                let shared = shared.clone();
                let kill = killer.clone();
                async move { Ok::<_, Infallible>(handle(&shared, &kill, request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                _ = kill.notified() => {}
                _ = stop.changed() => {}
            }
        });
    }
}

/// Never returns: the connection is closed without an answer.
async fn close_without_answer(kill: &Notify) -> Response<Full<Bytes>> {
    kill.notify_one();
    std::future::pending().await
}

async fn handle(
    shared: &Shared,
    kill: &Notify,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let arrived = Instant::now();
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let method = parts.method.as_str().to_owned();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or_default().to_owned();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let bearer = header("authorization")
        .as_deref()
        .and_then(|a| a.strip_prefix("Bearer "))
        .map(str::to_owned);
    let accepted = bearer.as_deref().and_then(|token| {
        let state = shared.lock();
        state
            .accepted
            .iter()
            .find(|(t, _)| t.matches(token))
            .map(|(_, user)| (user.user.clone(), user.token.clone()))
    });
    // The user the server authorizes: an impersonated one, else the token's.
    let user = header("impersonate-user").unwrap_or_else(|| match &accepted {
        Some((user, _)) => user.clone(),
        None => bearer
            .as_deref()
            .and_then(|token| shared.upstream.users.get(token))
            .cloned()
            .unwrap_or_default(),
    });
    let (index, plan) = {
        let mut state = shared.lock();
        state.requests.push(RecordedRequest {
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            content_type: header("content-type"),
            body: if body.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&body)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
            },
            status: 0,
            user,
            upstream_us: 0,
        });
        let index = state.requests.len() - 1;
        (index, plan_faults(&mut state.faults, &method, &path))
    };
    let finish = |status: u16, upstream: Option<Duration>| {
        if let Some(r) = shared.lock().requests.get_mut(index) {
            r.status = status;
            r.upstream_us = upstream.map_or(0, |d| d.as_micros() as u64);
        }
    };
    let answer_after = arrived + Duration::from_millis(plan.answer_after_ms);
    if plan.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(plan.latency_ms)).await;
    }
    match &plan.action {
        Some(FaultKind::Reset) => return close_without_answer(kill).await,
        Some(FaultKind::Hang) => return std::future::pending().await,
        Some(FaultKind::Status {
            code,
            retry_after_secs,
        }) => {
            finish(*code, None);
            tokio::time::sleep_until(answer_after.into()).await;
            return status::injected(*code, *retry_after_secs, &method, &path);
        }
        Some(FaultKind::ConflictBump) => write_competing_change(&shared.upstream, &path).await,
        Some(
            FaultKind::Latency { .. } | FaultKind::AnswerAfter { .. } | FaultKind::DropResponse,
        )
        | None => {}
    }
    let mut forward = shared.upstream.client.request(
        parts.method.clone(),
        format!(
            "{}{}",
            shared.upstream.server,
            parts.uri.path_and_query().map_or("/", |p| p.as_str())
        ),
    );
    for (name, value) in &parts.headers {
        let hop = matches!(
            name.as_str(),
            "host" | "connection" | "content-length" | "transfer-encoding"
        );
        // An accepted token is replaced by its user's own below.
        let replaced = name == "authorization" && accepted.is_some();
        if !hop && !replaced {
            forward = forward.header(name, value);
        }
    }
    if let Some((_, token)) = &accepted {
        forward = forward.bearer_auth(token);
    }
    let forwarded = Instant::now();
    let answer = match forward.body(body).send().await {
        Ok(answer) => answer,
        // The server is unreachable: so is the proxy.
        Err(_) => return close_without_answer(kill).await,
    };
    let status = answer.status();
    let headers = answer.headers().clone();
    let Ok(bytes) = answer.bytes().await else {
        return close_without_answer(kill).await;
    };
    finish(status.as_u16(), Some(forwarded.elapsed()));
    tokio::time::sleep_until(answer_after.into()).await;
    if plan.action == Some(FaultKind::DropResponse) {
        // Stored by the server; the answer never leaves.
        return close_without_answer(kill).await;
    }
    let mut response = Response::new(Full::new(bytes));
    *response.status_mut() = status;
    for (name, value) in &headers {
        if !matches!(
            name.as_str(),
            "connection" | "content-length" | "transfer-encoding"
        ) {
            response.headers_mut().append(name, value.clone());
        }
    }
    response
}

/// Someone else's write to the object `path` names, just before ours: a label, as the
/// admin. A path that names no object (a list, a create) is left alone.
async fn write_competing_change(upstream: &Upstream, path: &str) {
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let patch = json!({"metadata": {"labels": {COMPETING_WRITE: n.to_string()}}});
    let sent = upstream
        .client
        .patch(format!("{}{path}", upstream.server))
        .bearer_auth(&upstream.admin_token)
        .header("content-type", "application/merge-patch+json")
        .body(patch.to_string())
        .send()
        .await;
    if let Ok(answer) = sent
        && !answer.status().is_success()
    {
        tracing::debug!(status = %answer.status(), path, "no competing write");
    }
}
