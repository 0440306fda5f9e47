//! The servers tests start as child processes on the loopback (moto, Prometheus, the Lambda
//! emulator): a free port to give one, and the wait until it answers.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// A loopback port the OS says is free now, for a server about to be started on it.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Asks `ready` every `every` until it answers true; panics with `failure` once `limit` has
/// passed without.
pub async fn wait_until(
    limit: Duration,
    every: Duration,
    failure: &str,
    mut ready: impl AsyncFnMut() -> bool,
) {
    let started = Instant::now();
    while !ready().await {
        assert!(started.elapsed() < limit, "{failure}");
        tokio::time::sleep(every).await;
    }
}

/// Starts `command` (no stdout, killed with its handle), a server told to listen on `port`,
/// and waits up to `limit` until `http://127.0.0.1:{port}{ready_path}` answers with a
/// success: the child and that base URL. `what` names the server in a failure.
pub async fn serve(
    mut command: Command,
    port: u16,
    ready_path: &str,
    limit: Duration,
    what: &str,
) -> (Child, String) {
    let child = command
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|err| panic!("start {what}: {err} (run scripts/setup)"));
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let probe = format!("{url}{ready_path}");
    wait_until(
        limit,
        Duration::from_millis(100),
        &format!("{what} did not answer {probe}"),
        async || {
            let answer = http.get(&probe).send().await;
            answer.is_ok_and(|a| a.status().is_success())
        },
    )
    .await;
    (child, url)
}
