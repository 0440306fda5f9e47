//! Runs a function's built `bootstrap` under the AWS Lambda Runtime Interface Emulator,
//! the same emulator `sam local invoke` uses inside its container, natively and without
//! Docker. The emulator ships in the `aws-sam-cli` wheel (installed by `scripts/setup`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::process::{Child, Command};

use crate::events::workspace_root;
use crate::local_server::{free_port, wait_until};

/// Where the emulator binary is: `LAMBDA_RIE`, else inside the project's `.venv`.
pub fn emulator_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("LAMBDA_RIE") {
        return Some(PathBuf::from(path));
    }
    let lib = workspace_root().join(".venv/lib");
    std::fs::read_dir(lib).ok()?.flatten().find_map(|python| {
        let candidate = python
            .path()
            .join("site-packages/samcli/local/rapid/aws-lambda-rie-x86_64");
        candidate.exists().then_some(candidate)
    })
}

/// The function's debug binary, built on demand so the test is self-sufficient.
pub fn function_binary(function: &str) -> PathBuf {
    binary(function, function)
}

/// A debug binary of the workspace, built on demand.
pub fn binary(package: &str, bin: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let binary = target.join("debug").join(bin);
    let status =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--quiet", "-p", package, "--bin", bin])
            .current_dir(workspace_root())
            .status()
            .expect("run cargo build");
    assert!(
        status.success(),
        "cargo build -p {package} --bin {bin} failed"
    );
    assert!(binary.exists(), "{} missing after build", binary.display());
    binary
}

/// One emulated Lambda function.
pub struct Emulator {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Emulator {
    /// Starts the emulator for `bootstrap` with `env` (plus the usual Lambda variables).
    pub async fn start(bootstrap: &Path, env: &[(&str, &str)]) -> Emulator {
        Self::start_in(bootstrap, env, None).await
    }

    /// [`Emulator::start`] with the function's working directory at `task_root`, as Lambda
    /// runs it in `/var/task` (relative paths in the environment resolve there).
    pub async fn start_in(
        bootstrap: &Path,
        env: &[(&str, &str)],
        task_root: Option<&Path>,
    ) -> Emulator {
        let rie = emulator_path().expect(
            "AWS Lambda Runtime Interface Emulator not found: run scripts/setup (installs aws-sam-cli into .venv) or set LAMBDA_RIE",
        );
        let port = free_port();
        let runtime_port = free_port();
        let log = std::env::temp_dir().join(format!("rie-{}-{port}.log", std::process::id()));
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut command = Command::new(rie);
        command
            .arg("--runtime-interface-emulator-address")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--runtime-api-address")
            .arg(format!("127.0.0.1:{runtime_port}"))
            .arg(bootstrap)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("AWS_LAMBDA_FUNCTION_NAME", "function")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/function")
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "emulated")
            .env("AWS_REGION", "us-east-1")
            .stdout(Stdio::from(log_file.try_clone().expect("dup log")))
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true);
        for (k, v) in env {
            command.env(k, v);
        }
        if let Some(root) = task_root {
            command.current_dir(root);
        }
        let child = command.spawn().expect("start emulator");
        let emulator = Emulator { child, port, log };
        wait_until(
            Duration::from_secs(10),
            Duration::from_millis(20),
            "emulator did not listen",
            async || {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            },
        )
        .await;
        emulator
    }

    /// The emulator as Lambda's API endpoint (`AWS_ENDPOINT_URL`): its one function is
    /// named `function`.
    pub fn endpoint_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The emulator's invocations endpoint, which takes the event as Lambda's Invoke API does.
    pub fn invocations_url(&self) -> String {
        format!(
            "http://127.0.0.1:{}/2015-03-31/functions/function/invocations",
            self.port
        )
    }

    /// Invokes the function with `event`; returns the HTTP status and the JSON answer
    /// (the function's response, or Lambda's `errorMessage` document).
    pub async fn invoke(&self, event: &Value) -> (u16, Value) {
        let response = reqwest::Client::new()
            .post(self.invocations_url())
            .json(event)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .expect("invoke");
        let status = response.status().as_u16();
        let body = response.text().await.expect("body");
        let value = serde_json::from_str(&body).unwrap_or(Value::String(body));
        (status, value)
    }

    /// Everything the emulator and the function printed so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The function's JSON log lines.
    pub fn json_logs(&self) -> Vec<Value> {
        self.logs()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.is_object())
            .collect()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_file(&self.log);
    }
}
