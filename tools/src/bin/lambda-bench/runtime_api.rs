//! A minimal Lambda Runtime API (the interface the real Lambda service and the Runtime
//! Interface Emulator give a `bootstrap`), recording when things happen:
//! the first `GET /2018-06-01/runtime/invocation/next` (the runtime is initialised), when
//! each event is handed out and when its response (or error) has been received in full.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

const PREFIX: &str = "/2018-06-01/runtime";

/// One invocation as the runtime API saw it.
#[derive(Debug)]
pub struct Invoked {
    /// The event was handed to the function (the `/next` answer was ready).
    pub served: Instant,
    /// The function's response (or error) was received in full.
    pub done: Instant,
    /// `false` when the function reported an invocation error.
    pub ok: bool,
    /// The response document, or the error document.
    pub body: Value,
}

impl Invoked {
    /// Time from handing out the event to having the whole answer.
    pub fn duration(&self) -> Duration {
        self.done.saturating_duration_since(self.served)
    }
}

struct Pending {
    request_id: String,
    trace_id: String,
    event: Bytes,
    served: oneshot::Sender<Instant>,
}

#[derive(Default)]
struct Shared {
    first_next: Option<Instant>,
    waiting: HashMap<String, oneshot::Sender<(Instant, bool, Bytes)>>,
    init_error: Option<String>,
}

/// A runtime API on a free local port.
pub struct RuntimeApi {
    addr: SocketAddr,
    queue: mpsc::Sender<Pending>,
    shared: Arc<Mutex<Shared>>,
    counter: std::sync::atomic::AtomicU64,
    task: tokio::task::JoinHandle<()>,
}

impl RuntimeApi {
    /// Starts serving on `127.0.0.1` (port chosen by the system).
    pub async fn start() -> std::io::Result<RuntimeApi> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (queue, receiver) = mpsc::channel::<Pending>(16);
        let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
        let shared = Arc::new(Mutex::new(Shared::default()));
        let task = tokio::spawn(serve(listener, receiver, shared.clone()));
        Ok(RuntimeApi {
            addr,
            queue,
            shared,
            counter: std::sync::atomic::AtomicU64::new(0),
            task,
        })
    }

    /// `host:port`, the value of `AWS_LAMBDA_RUNTIME_API`.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// When the runtime first asked for an event.
    pub fn first_next(&self) -> Option<Instant> {
        lock(&self.shared).first_next
    }

    /// Queues `event` for the function's next `/next` (at once, so a process started
    /// afterwards finds it waiting); the returned future waits for the answer.
    pub fn invoke(
        &self,
        event: Bytes,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Result<Invoked, String>> + 'static {
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let request_id = format!("bench-{n:08}-0000-4000-8000-000000000000");
        let (served_tx, served_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        lock(&self.shared)
            .waiting
            .insert(request_id.clone(), done_tx);
        let queued = self
            .queue
            .try_send(Pending {
                trace_id: format!("Root=1-67a1b2c3-{n:024x};Parent=53995c3f42cd8ad8;Sampled=1"),
                request_id,
                event,
                served: served_tx,
            })
            .map_err(|err| format!("cannot queue the event: {err}"));
        let shared = self.shared.clone();
        async move {
            queued?;
            let answer = async {
                let served = served_rx.await.map_err(|_| "event never served")?;
                let (done, ok, body) = done_rx.await.map_err(|_| "no answer")?;
                Ok::<_, &str>((served, done, ok, body))
            };
            let (served, done, ok, body) = tokio::time::timeout(timeout, answer)
                .await
                .map_err(|_| {
                    let init = lock(&shared).init_error.clone();
                    format!(
                        "no answer within {timeout:?}{}",
                        init.map(|e| format!(" (init error: {e})"))
                            .unwrap_or_default()
                    )
                })?
                .map_err(str::to_owned)?;
            let body = serde_json::from_slice(&body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
            Ok(Invoked {
                served,
                done,
                ok,
                body,
            })
        }
    }
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

type Queue = Arc<tokio::sync::Mutex<mpsc::Receiver<Pending>>>;

async fn serve(listener: TcpListener, queue: Queue, shared: Arc<Mutex<Shared>>) {
    while let Ok((stream, _)) = listener.accept().await {
        // Without TCP_NODELAY a keep-alive answer can wait ~40 ms (Nagle + delayed ACK).
        let _ = stream.set_nodelay(true);
        let queue = queue.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                handle(request, queue.clone(), shared.clone())
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(
    request: Request<Incoming>,
    queue: Queue,
    shared: Arc<Mutex<Shared>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let arrived = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return Ok(reply(StatusCode::NOT_FOUND, Bytes::new()));
    };
    if method == hyper::Method::GET && rest == "/invocation/next" {
        lock(&shared).first_next.get_or_insert(arrived);
        let Some(pending) = queue.lock().await.recv().await else {
            return Ok(reply(StatusCode::GONE, Bytes::new()));
        };
        let deadline = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis()
            + 60_000;
        let mut response = reply(StatusCode::OK, pending.event);
        let headers = response.headers_mut();
        for (name, value) in [
            ("lambda-runtime-aws-request-id", pending.request_id.clone()),
            ("lambda-runtime-deadline-ms", deadline.to_string()),
            (
                "lambda-runtime-invoked-function-arn",
                "arn:aws:lambda:us-east-1:123456789012:function:bench".to_owned(),
            ),
            ("lambda-runtime-trace-id", pending.trace_id.clone()),
        ] {
            if let Ok(value) = value.parse() {
                headers.insert(name, value);
            }
        }
        let _ = pending.served.send(Instant::now());
        return Ok(response);
    }
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let received = Instant::now();
    if method == hyper::Method::POST && rest == "/init/error" {
        lock(&shared).init_error = Some(String::from_utf8_lossy(&body).into_owned());
        return Ok(reply(StatusCode::ACCEPTED, Bytes::new()));
    }
    if method == hyper::Method::POST
        && let Some(tail) = rest.strip_prefix("/invocation/")
        && let Some((id, kind)) = tail.split_once('/')
        && (kind == "response" || kind == "error")
    {
        if let Some(waiter) = lock(&shared).waiting.remove(id) {
            let _ = waiter.send((received, kind == "response", body));
        }
        return Ok(reply(StatusCode::ACCEPTED, Bytes::new()));
    }
    Ok(reply(StatusCode::NOT_FOUND, Bytes::new()))
}

fn reply(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
}
