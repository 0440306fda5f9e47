//! The test kit's own calls to the API server under load: the test control plane, busy with
//! hundreds of meshes, drops a connection now and then, and a harness that took that for a
//! failure of the function under test would be flaky.

use std::time::{Duration, Instant};

/// Runs one create call; retries while the server fails (5xx, or the connection does), for
/// up to two minutes. An object that exists after a failed attempt was created by it.
pub async fn create<T, F: Future<Output = kube::Result<T>>>(
    what: &str,
    call: impl Fn() -> F,
) -> Result<(), String> {
    let started = Instant::now();
    let mut retried = false;
    loop {
        match call().await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 && retried => return Ok(()),
            Err(kube::Error::Api(status)) if status.code < 500 => {
                return Err(format!("create {what}: {} {}", status.code, status.message));
            }
            Err(_) if started.elapsed() < Duration::from_secs(120) => {
                retried = true;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(err) => panic!("the API server keeps failing to create {what}: {err}"),
        }
    }
}

/// Runs one idempotent call (a read, a status patch); retries while the server or the
/// connection fails, for up to two minutes:
/// the test control plane under the suites' load drops a connection now and then.
pub async fn idempotent<T, F: Future<Output = kube::Result<T>>>(
    what: &str,
    call: impl Fn() -> F,
) -> T {
    let started = Instant::now();
    loop {
        match call().await {
            Ok(value) => return value,
            Err(kube::Error::Api(status)) if status.code < 500 && status.code != 429 => {
                panic!("{what}: {} {}", status.code, status.message)
            }
            Err(_) if started.elapsed() < Duration::from_secs(120) => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(err) => panic!("the API server keeps failing to {what}: {err}"),
        }
    }
}
