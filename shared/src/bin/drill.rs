//! `drill`: publishes a chaos-drill alert for one function to the alert topic.
//!
//! The alert is labelled `drill="true"`, so the function always makes a server-side dry run
//! and its report says whether the drill passed (routed to the right function, target found,
//! patch accepted by the API server's dry run) or failed and why. The same command works
//! against AWS and a local emulator (set `AWS_ENDPOINT_URL`). The alert is built by
//! [`mesh_remediation::drill`], as `kubectl mesh-remediation drill` builds it.
//!
//! ```text
//! drill latency-restart --topic ARN --namespace shop --deployment checkout-v2
//! drill error-rollback  --topic ARN --namespace shop --service checkout --version v2
//! drill region-failover --topic ARN --namespace shop --service frontend --region us-east-1
//! ```

use std::collections::BTreeMap;
use std::process::ExitCode;

use mesh_remediation::drill::Drill;

const USAGE: &str = "usage: drill <latency-restart|error-rollback|db-circuit-break|region-failover> --topic ARN --namespace NS [--deployment D] [--service S] [--db_host H] [--version V] [--region R] [--cluster C]";

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(message_id) => {
            println!("drill published: MessageId {message_id}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("drill: {err}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> Result<String, String> {
    let mut args = std::env::args().skip(1);
    let function = args.next().ok_or("missing function")?;
    let mut options = BTreeMap::new();
    while let Some(flag) = args.next() {
        let name = flag
            .strip_prefix("--")
            .ok_or(format!("unexpected argument {flag:?}"))?;
        let value = args.next().ok_or(format!("--{name} needs a value"))?;
        options.insert(name.to_owned(), value);
    }
    let topic = options.remove("topic").ok_or("--topic is required")?;
    let namespace = options
        .remove("namespace")
        .ok_or("--namespace is required")?;
    let drill = Drill::new(&function, &namespace, &options, chrono::Utc::now())
        .map_err(|err| err.to_string())?;
    drill.publish(&topic).await.map_err(|err| err.to_string())
}
