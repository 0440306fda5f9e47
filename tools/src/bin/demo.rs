//! The local demo: a Kubernetes API stand-in seeded with a demo mesh, each function's
//! built bootstrap under the AWS Lambda Runtime Interface Emulator, the sample events
//! from `events/` sent through them, and the mesh shown before and after.
//!
//! `cargo run -p remediation-testkit --bin demo` (or `scripts/demo`). No AWS account,
//! no Docker, no cluster.

use std::path::Path;

use kube_standin::StandIn;
use remediation_testkit::events::{self, workspace_root};
use remediation_testkit::lambda_emulator::{Emulator, emulator_path, function_binary};
use serde_json::Value;

const FUNCTIONS: [&str; 4] = [
    "latency-restart",
    "error-rollback",
    "db-circuit-break",
    "region-failover",
];

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if emulator_path().is_none() {
        return Err(
            "the AWS Lambda Runtime Interface Emulator is missing: run scripts/setup first".into(),
        );
    }
    let standin = StandIn::start().await?;
    kube_standin::seed_demo_mesh(&standin);
    let kubeconfig =
        std::env::temp_dir().join(format!("demo-kubeconfig-{}.yaml", std::process::id()));
    std::fs::write(&kubeconfig, standin.kubeconfig_yaml("shop"))?;
    println!(
        "Kubernetes API stand-in at {} seeded with the demo mesh (namespace shop)\n",
        standin.url()
    );

    let available: Vec<&str> = FUNCTIONS
        .into_iter()
        .filter(|f| workspace_root().join("functions").join(f).exists())
        .collect();
    println!("== BEFORE ==");
    print_mesh(&standin);

    for function in &available {
        println!("\n== {function} ==");
        let bootstrap = function_binary(function);
        let emulator = start(&bootstrap, &kubeconfig).await;
        for (label, sample) in [
            (
                "drill (forced server-side dry run)",
                format!("{function}-drill.json"),
            ),
            ("firing alert", format!("{function}-firing.json")),
            (
                "same alert again (at-least-once delivery)",
                format!("{function}-firing.json"),
            ),
        ] {
            if !workspace_root().join("events").join(&sample).exists() {
                continue;
            }
            let started = std::time::Instant::now();
            let (_, response) = emulator.invoke(&events::fresh(&sample, "shop")).await;
            println!(
                "  {label:<44} events/{sample}  ({} ms)",
                started.elapsed().as_millis()
            );
            print_outcomes(&response);
        }
    }
    println!("\n== AFTER ==");
    print_mesh(&standin);
    let _ = std::fs::remove_file(&kubeconfig);
    Ok(())
}

async fn start(bootstrap: &Path, kubeconfig: &Path) -> Emulator {
    let kubeconfig = kubeconfig.to_string_lossy().into_owned();
    Emulator::start(
        bootstrap,
        &[
            ("KUBECONFIG", kubeconfig.as_str()),
            ("DRY_RUN", "false"),
            ("RUST_LOG", "warn"),
        ],
    )
    .await
}

fn print_outcomes(response: &Value) {
    let Some(outcomes) = response["outcomes"].as_array() else {
        println!("    function error: {response}");
        return;
    };
    for o in outcomes {
        let what = o["reason"].as_str().or(o["change"].as_str()).unwrap_or("");
        println!(
            "    -> {:<9} {}  {}",
            o["outcome"].as_str().unwrap_or("?"),
            o["target"].as_str().unwrap_or("-"),
            what
        );
    }
}

fn print_mesh(standin: &StandIn) {
    let mut objects = standin.objects();
    objects.sort_by_key(|o| {
        (
            o["kind"].as_str().unwrap_or("").to_owned(),
            o["metadata"]["name"].as_str().unwrap_or("").to_owned(),
        )
    });
    for o in &objects {
        if o["metadata"]["namespace"] != "shop" {
            continue;
        }
        let name = o["metadata"]["name"].as_str().unwrap_or("");
        match o["kind"].as_str() {
            Some("Deployment") => println!(
                "  Deployment      {name:<14} generation {:<2} restartedAt {}",
                o["metadata"]["generation"],
                o["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"].as_str().unwrap_or("-")
            ),
            Some("VirtualService") => {
                let routes: Vec<String> = o["spec"]["http"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|h| h["route"].as_array().into_iter().flatten())
                    .map(|r| {
                        let d = &r["destination"];
                        let to = d["subset"].as_str().or(d["host"].as_str()).unwrap_or("?");
                        format!("{to}={}", r["weight"].as_i64().unwrap_or(100))
                    })
                    .collect();
                println!("  VirtualService  {name:<14} weights {}", routes.join(" "));
            }
            Some("DestinationRule") => {
                let policy = &o["spec"]["trafficPolicy"];
                println!(
                    "  DestinationRule {name:<14} outlierDetection {}  connectionPool {}  failover {}",
                    compact(&policy["outlierDetection"]),
                    compact(&policy["connectionPool"]),
                    compact(&policy["loadBalancer"]["localityLbSetting"]["failover"])
                );
            }
            _ => {}
        }
    }
}

fn compact(v: &Value) -> String {
    if v.is_null() {
        "-".into()
    } else {
        v.to_string()
    }
}
