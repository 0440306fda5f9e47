//! A tiny local HTTP endpoint that records what is posted to it (Slack / PagerDuty
//! stand-ins, health checks, a local AWS). Sets TCP_NODELAY so it never adds Nagle delays.

use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

/// One request received.
#[derive(Debug, Clone)]
pub struct Captured {
    /// Method and path, e.g. `POST /services/T0/B0/x`.
    pub request_line: String,
    /// The request line and headers as sent.
    pub head: String,
    /// The body as sent.
    pub text: String,
    /// The body, parsed as JSON when it is JSON.
    pub body: Value,
}

/// What the server answers a request with.
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// `content-type` header.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
}

impl Answer {
    /// `status` with an empty JSON object.
    pub fn empty_json(status: u16) -> Answer {
        Answer {
            status,
            content_type: "application/json",
            body: "{}".to_owned(),
        }
    }
}

/// A listener that records every request and answers it.
pub struct CaptureServer {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    received: Arc<Mutex<Vec<Captured>>>,
    task: tokio::task::JoinHandle<()>,
}

impl CaptureServer {
    /// Starts a listener that answers `status` with an empty JSON object.
    pub async fn start(status: u16) -> CaptureServer {
        CaptureServer::start_answering(move |_| Answer::empty_json(status)).await
    }

    /// Starts a listener that answers each request with what `answer` makes of it.
    pub async fn start_answering(
        answer: impl Fn(&Captured) -> Answer + Send + Sync + 'static,
    ) -> CaptureServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let received: Arc<Mutex<Vec<Captured>>> = Arc::default();
        let sink = received.clone();
        let answer = Arc::new(answer);
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let sink = sink.clone();
                let answer = answer.clone();
                tokio::spawn(async move {
                    let Some(request) = read_request(&mut stream).await else {
                        return;
                    };
                    let Answer {
                        status,
                        content_type,
                        body,
                    } = answer(&request);
                    sink.lock().expect("lock").push(request);
                    let reason = if status < 400 { "OK" } else { "Error" };
                    let reply = format!(
                        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(reply.as_bytes()).await;
                });
            }
        });
        CaptureServer {
            url,
            received,
            task,
        }
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Captured> {
        self.received.lock().expect("lock").clone()
    }
}

/// Reads one request (head and `content-length` body); `None` if the peer went away first.
async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<Captured> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
        let Some(head_end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
        let length = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
            })
            .unwrap_or(0);
        if buffer.len() < head_end + 4 + length {
            continue;
        }
        let raw = &buffer[head_end + 4..head_end + 4 + length];
        let text = String::from_utf8_lossy(raw).into_owned();
        let body = serde_json::from_slice(raw).unwrap_or_else(|_| Value::String(text.clone()));
        let request_line = head
            .lines()
            .next()
            .unwrap_or("")
            .rsplit_once(' ')
            .map(|(l, _)| l.to_owned())
            .unwrap_or_default();
        return Some(Captured {
            request_line,
            head,
            text,
            body,
        });
    }
}

impl Drop for CaptureServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
