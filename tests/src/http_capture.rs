//! A tiny local HTTP endpoint that records what is posted to it (Slack / PagerDuty
//! stand-ins, health checks). Sets TCP_NODELAY so it never adds Nagle delays.

use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

/// One request received.
#[derive(Debug, Clone)]
pub struct Captured {
    /// Method and path, e.g. `POST /services/T0/B0/x`.
    pub request_line: String,
    /// The body, parsed as JSON when it is JSON.
    pub body: Value,
}

/// A listener answering every request with a fixed status.
pub struct CaptureServer {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    received: Arc<Mutex<Vec<Captured>>>,
    task: tokio::task::JoinHandle<()>,
}

impl CaptureServer {
    /// Starts a listener that answers `status` with an empty JSON object.
    pub async fn start(status: u16) -> CaptureServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let received: Arc<Mutex<Vec<Captured>>> = Arc::default();
        let sink = received.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let sink = sink.clone();
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    let mut chunk = [0u8; 8192];
                    loop {
                        let Ok(n) = stream.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buffer.extend_from_slice(&chunk[..n]);
                        let Some(head_end) = buffer.windows(4).position(|w| w == b"\r\n\r\n")
                        else {
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
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
                        let body = &buffer[head_end + 4..head_end + 4 + length];
                        let body = serde_json::from_slice(body).unwrap_or_else(|_| {
                            Value::String(String::from_utf8_lossy(body).into())
                        });
                        let request_line = head
                            .lines()
                            .next()
                            .unwrap_or("")
                            .rsplit_once(' ')
                            .map(|(l, _)| l.to_owned())
                            .unwrap_or_default();
                        sink.lock()
                            .expect("lock")
                            .push(Captured { request_line, body });
                        let reason = if status < 400 { "OK" } else { "Error" };
                        let reply = format!(
                            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}"
                        );
                        let _ = stream.write_all(reply.as_bytes()).await;
                        return;
                    }
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

impl Drop for CaptureServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
