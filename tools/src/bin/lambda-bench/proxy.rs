//! A TCP pass-through in front of the Kubernetes API that records, per HTTP exchange, when
//! the request's first bytes arrived and when the answer's last bytes left. Requests on one
//! connection are not pipelined (the kube client waits for each answer), so an exchange
//! starts with the first client bytes after an answer and ends with the last answer bytes
//! before the next request. The sum of those intervals is the API time as the function saw
//! it, minus only its own socket reads and writes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// One request and its answer, as seen by the proxy.
#[derive(Debug, Clone, Copy)]
pub struct Exchange {
    /// The request's first bytes arrived.
    pub start: Instant,
    /// The answer's last bytes so far were passed on (`None`: no answer yet).
    pub end: Option<Instant>,
}

/// The proxy; stops when dropped.
pub struct TimingProxy {
    addr: SocketAddr,
    exchanges: Arc<Mutex<Vec<Exchange>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TimingProxy {
    /// Listens on a free local port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<TimingProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let exchanges = Arc::new(Mutex::new(Vec::new()));
        let log = exchanges.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        let _ = pump(client, server, log).await;
                    }
                });
            }
        });
        Ok(TimingProxy {
            addr,
            exchanges,
            task,
        })
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Exchanges that started in `[from, to]`: how many, and the time at least one of them
    /// was outstanding (overlapping exchanges count once).
    pub fn busy(&self, from: Instant, to: Instant) -> (usize, Duration) {
        let mut spans: Vec<(Instant, Instant)> = self
            .exchanges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|e| e.start >= from && e.start <= to)
            .map(|e| (e.start, e.end.unwrap_or(to).min(to)))
            .collect();
        let count = spans.len();
        spans.sort();
        let mut total = Duration::ZERO;
        let mut current: Option<(Instant, Instant)> = None;
        for (start, end) in spans {
            current = match current {
                Some((s, e)) if start <= e => Some((s, e.max(end))),
                Some((s, e)) => {
                    total += e - s;
                    Some((start, end))
                }
                None => Some((start, end)),
            };
        }
        if let Some((s, e)) = current {
            total += e - s;
        }
        (count, total)
    }
}

impl Drop for TimingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(
    client: TcpStream,
    server: TcpStream,
    log: Arc<Mutex<Vec<Exchange>>>,
) -> std::io::Result<()> {
    // Without TCP_NODELAY a keep-alive answer can wait ~40 ms (Nagle + delayed ACK).
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    // Index in `log` of this connection's current exchange.
    let current: Arc<Mutex<Option<usize>>> = Arc::new(Mutex::new(None));

    let up = {
        let log = log.clone();
        let current = current.clone();
        async move {
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                let n = client_read.read(&mut buffer).await?;
                if n == 0 {
                    return server_write.shutdown().await;
                }
                let now = Instant::now();
                {
                    let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                    let mut current = current.lock().unwrap_or_else(|e| e.into_inner());
                    let answered = current.is_none_or(|i| log[i].end.is_some());
                    if answered {
                        log.push(Exchange {
                            start: now,
                            end: None,
                        });
                        *current = Some(log.len() - 1);
                    }
                }
                server_write.write_all(&buffer[..n]).await?;
            }
        }
    };
    let down = async move {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = server_read.read(&mut buffer).await?;
            if n == 0 {
                return client_write.shutdown().await;
            }
            client_write.write_all(&buffer[..n]).await?;
            let now = Instant::now();
            let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = *current.lock().unwrap_or_else(|e| e.into_inner()) {
                log[i].end = Some(now);
            }
        }
    };
    let (a, b) = tokio::join!(up, down);
    a.and(b)
}
