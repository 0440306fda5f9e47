//! `lambda-bench`: the Lambda-level performance figures of a function's release `bootstrap`,
//! measured against the real control plane (`scripts/test-cluster`) behind the test kit's
//! fault proxy ([`cluster`]). `scripts/bench` starts and builds what it needs and runs it;
//! run by hand, with a control plane running:
//!
//! ```text
//! lambda-bench --bootstrap target/release/latency-restart --kubeconfig DIR/admin.kubeconfig \
//!              [--runs 5] [--warm 50] [--only cold,warm,storm,capped,storm0,rie] [--json OUT.json]
//! ```
//!
//! The bootstrap runs as Lambda runs it, but against a runtime API of our own
//! ([`runtime_api`]), which records when the runtime first asks for an event and when each
//! answer arrives:
//!
//! * `cold`: spawn -> first `GET /runtime/invocation/next` (cold start), then that first
//!   invocation of one firing alert (GET, PATCH, POST Event on the real API server through
//!   the fault proxy, no injected latency), a fresh process and a fresh Deployment per run.
//! * `warm`: per run one process, a firing alert for the next fresh Deployment each time (a
//!   real server's Deployment is in rollout right after a restart, so the same one cannot
//!   act twice in a row), every invocation acting: GET, PATCH, POST Event, through a timing
//!   pass-through ([`proxy`]) in front of the fault proxy; the function's time is the
//!   invocation time minus the time the API had a request outstanding. Alternating with
//!   it, an alert screened out before any API call (protected namespace `kube-system`): no
//!   API time to subtract. Measured after the cold invocation and a few warm-up ones; the
//!   figure is the median of the runs' medians, so one noisy stretch of the machine cannot
//!   decide it. The function's CPU time (`/proc/<pid>/task/*/schedstat`) is recorded too.
//! * `storm`: 500 firing alerts over 200 opted-in Deployments in one invocation, every API
//!   request answered 20 ms after it was sent or when the server answered if later,
//!   `MAX_TARGETS_PER_INVOCATION=200`; wall time against the floor (the round trips the
//!   safety rules need x 20 ms) and against the floor on this server (each request costing
//!   the server's own time where that was longer), peak RSS (`VmHWM`), the server's time
//!   per kind of request.
//! * `capped`: the same storm with the default blast radius (10).
//! * `storm0`: the storm without injected latency: the processing time alone (function,
//!   fault proxy and API server), which is what the storm adds to its floor.
//! * `rie`: the cold start under the real AWS Lambda Runtime Interface Emulator, as it
//!   reports it (`INIT REPORT(durationMs: ...)`), to cross-check `cold`.
//!
//! The result is JSON (`--json`, else stdout); progress goes to stderr.

mod cluster;
mod proxy;
mod runtime_api;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use remediation_testkit::events;
use remediation_testkit::lambda_emulator::{Emulator, emulator_path};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use cluster::BenchCluster;
use proxy::TimingProxy;
use remediation_testkit::fault_proxy::RecordedRequest;
use runtime_api::{Invoked, RuntimeApi};

/// Injected on every API request during the storm.
const STORM_LATENCY_MS: u64 = 20;
const STORM_TARGETS: usize = 200;
const STORM_ALERTS: usize = 500;
/// The template's caps per message (`deploy/alertmanager/sns.tmpl`).
const MESSAGE_MAX_ALERTS: usize = 200;
const MESSAGE_MAX_BYTES: usize = 250_000;
/// What the safety rules need per acting target: GET (state and record), PATCH (change +
/// record, resourceVersion precondition), POST (the Kubernetes Event).
const REQUESTS_PER_TARGET: usize = 3;
/// The brakes, once per invocation: the cluster's pause ConfigMap and the namespace, read
/// together (one round trip on the path) while the other targets wait for them.
const BRAKE_REQUESTS: usize = 2;
/// The budget slots, once per invocation: a read and a guarded write of the budget
/// ConfigMap, once every target has decided (two round trips on the path).
const BUDGET_REQUESTS: usize = 2;
/// Budgets the storms cannot spend: the slots are taken as in production, none refused.
const STORM_BUDGET: &str = "100000";
/// Default of `MAX_TARGETS_PER_INVOCATION`.
const DEFAULT_MAX_TARGETS: usize = 10;
const INVOKE_TIMEOUT: Duration = Duration::from_secs(120);
/// Warm invocations made before the measured ones (connections, allocator, caches).
const WARM_UP: usize = 5;

struct Options {
    bootstrap: PathBuf,
    kubeconfig: PathBuf,
    runs: usize,
    warm: usize,
    only: Vec<String>,
    json: Option<PathBuf>,
    concurrency: usize,
    /// Extra variables for the function (`--env KEY=VALUE`), e.g. `RUST_LOG=warn`.
    env: Vec<(String, String)>,
}

fn usage() -> &'static str {
    "usage: lambda-bench --bootstrap PATH --kubeconfig ADMIN_KUBECONFIG [--runs N] [--warm N] [--only cold,warm,storm,capped,storm0,rie] [--env KEY=VALUE]... [--json OUT]"
}

fn options() -> Result<Options, String> {
    let mut bootstrap = None;
    let mut kubeconfig = None;
    let mut runs = 5;
    let mut warm = 50;
    let mut only: Vec<String> = ["cold", "warm", "storm", "capped", "storm0", "rie"]
        .map(String::from)
        .to_vec();
    let mut json = None;
    let mut env = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--bootstrap" => bootstrap = Some(PathBuf::from(value()?)),
            "--kubeconfig" => kubeconfig = Some(PathBuf::from(value()?)),
            "--runs" => runs = value()?.parse().map_err(|_| "--runs: a number")?,
            "--warm" => warm = value()?.parse().map_err(|_| "--warm: a number")?,
            "--only" => only = value()?.split(',').map(String::from).collect(),
            "--json" => json = Some(PathBuf::from(value()?)),
            "--env" => {
                let pair = value()?;
                let (k, v) = pair.split_once('=').ok_or("--env needs KEY=VALUE")?;
                env.push((k.to_owned(), v.to_owned()));
            }
            "-h" | "--help" => return Err(usage().into()),
            other => return Err(format!("unknown argument {other}\n{}", usage())),
        }
    }
    let concurrency = match std::env::var("MAX_CONCURRENCY") {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| format!("MAX_CONCURRENCY={v} is not a number"))?,
        Err(_) => 8,
    };
    Ok(Options {
        bootstrap: bootstrap.ok_or("--bootstrap is required")?,
        kubeconfig: kubeconfig.ok_or("--kubeconfig is required")?,
        runs: runs.max(1),
        warm: warm.max(1),
        only,
        json,
        concurrency,
        env,
    })
}

fn main() -> ExitCode {
    let options = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("lambda-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lambda-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&options)) {
        Ok(result) => {
            let text = serde_json::to_string_pretty(&result).unwrap_or_default();
            match &options.json {
                Some(path) => {
                    if let Err(e) = std::fs::write(path, text) {
                        eprintln!("lambda-bench: {}: {e}", path.display());
                        return ExitCode::FAILURE;
                    }
                }
                None => println!("{text}"),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lambda-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(options: &Options) -> Result<Value, String> {
    let work = std::env::temp_dir().join(format!("lambda-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let bench = Bench {
        options,
        work: work.clone(),
    };
    let mut result = json!({
        "bootstrap": options.bootstrap.display().to_string(),
        "bootstrap_bytes": std::fs::metadata(&options.bootstrap).map(|m| m.len()).unwrap_or(0),
        "runs": options.runs,
        "concurrency": options.concurrency,
        "loadavg_before": loadavg(),
    });
    let wanted = |phase: &str| options.only.iter().any(|p| p == phase);
    if wanted("cold") {
        result["cold"] = bench.cold().await?;
    }
    if wanted("warm") {
        result["warm"] = bench.warm().await?;
    }
    if wanted("storm") {
        result["storm"] = bench.storm(Some(STORM_TARGETS), STORM_LATENCY_MS).await?;
    }
    if wanted("capped") {
        result["capped"] = bench.storm(None, STORM_LATENCY_MS).await?;
    }
    if wanted("storm0") {
        result["storm0"] = bench.storm(Some(STORM_TARGETS), 0).await?;
    }
    if wanted("rie") {
        result["rie"] = bench.rie().await?;
    }
    result["loadavg_after"] = json!(loadavg());
    let _ = std::fs::remove_dir_all(&work);
    Ok(result)
}

struct Bench<'a> {
    options: &'a Options,
    work: PathBuf,
}

impl Bench<'_> {
    /// Cold start and first invocation, a fresh process per run.
    async fn cold(&self) -> Result<Value, String> {
        let cluster = BenchCluster::start(&self.options.kubeconfig, "cold").await;
        let names: Vec<String> = (0..self.options.runs)
            .map(|run| format!("cold-{run}"))
            .collect();
        cluster.seed(&names).await?;
        let mut cold_start = Vec::new();
        let mut first = Vec::new();
        let mut spawn_to_answer = Vec::new();
        let mut rss = Vec::new();
        let mut requests = Vec::new();
        for (run, name) in names.iter().enumerate() {
            cluster.clear_requests();
            let event = sns_event(
                &[vec![alert(cluster.namespace(), name, run, Utc::now())]],
                Utc::now(),
            );
            let api = RuntimeApi::start().await.map_err(|e| e.to_string())?;
            let pending = api.invoke(to_bytes(&event), INVOKE_TIMEOUT);
            let function = Function::launch(
                &self.options.bootstrap,
                &api,
                cluster.kubeconfig(),
                &[],
                &self.work,
                &self.options.env,
            )?;
            let invoked = pending.await.map_err(|e| function.explain(&e))?;
            expect_outcomes(&invoked, &[("applied", 1)]).map_err(|e| function.explain(&e))?;
            let ready = api.first_next().ok_or("no /next before the answer")?;
            cold_start.push(ms(ready - function.spawned));
            first.push(ms(invoked.duration()));
            spawn_to_answer.push(ms(invoked.done - function.spawned));
            rss.push(function.peak_rss_kib().unwrap_or(0) as f64);
            requests.push(cluster.requests().len());
            eprintln!(
                "cold {run}: exec -> first /next {:.2} ms, first invocation {:.2} ms",
                ms(ready - function.spawned),
                ms(invoked.duration())
            );
        }
        Ok(json!({
            "cold_start_ms": stats(&cold_start),
            "first_invocation_ms": stats(&first),
            "spawn_to_answer_ms": stats(&spawn_to_answer),
            "peak_rss_kib": stats(&rss),
            "api_requests": requests,
        }))
    }

    /// Warm invocations: acting ones through the timing proxy, and screened-out ones.
    async fn warm(&self) -> Result<Value, String> {
        let cluster = BenchCluster::start(&self.options.kubeconfig, "warm").await;
        let proxy = TimingProxy::start(cluster.proxy_addr())
            .await
            .map_err(|e| e.to_string())?;
        let kubeconfig = self.work.join("proxy.kubeconfig");
        std::fs::write(&kubeconfig, cluster.kubeconfig_via(&proxy.url()))
            .map_err(|e| e.to_string())?;
        let screened = {
            let now = Utc::now();
            to_bytes(&sns_event(
                &[vec![alert("kube-system", "coredns", 1, now)]],
                now,
            ))
        };
        // Per run: medians of its invocations. The figure is the median of the runs'.
        let mut runs: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        let mut counts = Vec::new();
        let mut screened_requests = 0;
        for run in 0..self.options.runs {
            // One fresh Deployment per acting invocation: the first, the warm-up, the measured.
            let targets: Vec<String> = (0..=WARM_UP + self.options.warm)
                .map(|i| format!("warm-{run}-{i}"))
                .collect();
            cluster.seed(&targets).await?;
            let now = Utc::now();
            let mut acting = targets.iter().map(|target| {
                to_bytes(&sns_event(
                    &[vec![alert(cluster.namespace(), target, 0, now)]],
                    now,
                ))
            });
            let api = RuntimeApi::start().await.map_err(|e| e.to_string())?;
            let first = api.invoke(acting.next().unwrap_or_default(), INVOKE_TIMEOUT);
            let function = Function::launch(
                &self.options.bootstrap,
                &api,
                &kubeconfig,
                &[
                    ("COOLDOWN_SECONDS", "0"),
                    ("ESCALATION_WINDOW_SECONDS", "0"),
                    ("ESCALATE_AFTER", "0"),
                ],
                &self.work,
                &self.options.env,
            )?;
            first.await.map_err(|e| function.explain(&e))?;
            let pid = function.child.id();
            let explain = |e: String| function.explain(&e);
            let explain = &explain;
            let invoke = |event: &Bytes| {
                let before = cpu_ms(pid);
                let pending = api.invoke(event.clone(), INVOKE_TIMEOUT);
                async move {
                    let invoked = pending.await.map_err(explain)?;
                    let cpu = cpu_ms(pid).zip(before).map(|(b, a)| b - a);
                    Ok::<_, String>((invoked, cpu.unwrap_or(f64::NAN)))
                }
            };
            for event in acting.by_ref().take(WARM_UP) {
                invoke(&event).await?;
            }
            let mut samples: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
            // Acting and screened-out invocations alternate, so both see the same machine.
            for event in acting.by_ref() {
                let (invoked, cpu) = invoke(&event).await?;
                expect_outcomes(&invoked, &[("applied", 1)]).map_err(|e| function.explain(&e))?;
                let (count, busy) = proxy.busy(invoked.served, invoked.done);
                counts.push(count);
                let sample = samples.entry("acting_total").or_default();
                sample.push(ms(invoked.duration()));
                samples.entry("acting_api").or_default().push(ms(busy));
                samples
                    .entry("acting_function")
                    .or_default()
                    .push(ms(invoked.duration().saturating_sub(busy)));
                samples.entry("acting_cpu").or_default().push(cpu);

                let (invoked, cpu) = invoke(&screened).await?;
                expect_outcomes(&invoked, &[("skipped", 1)]).map_err(|e| function.explain(&e))?;
                screened_requests += proxy.busy(invoked.served, invoked.done).0;
                samples
                    .entry("screened_total")
                    .or_default()
                    .push(ms(invoked.duration()));
                samples.entry("screened_cpu").or_default().push(cpu);
            }
            for (name, values) in &samples {
                runs.entry(name).or_default().push(median(values));
            }
            eprintln!(
                "warm {run}: acting {:.3} ms total, {:.3} ms API, {:.3} ms function ({:.3} ms CPU); screened out {:.3} ms ({:.3} ms CPU)",
                median(&samples["acting_total"]),
                median(&samples["acting_api"]),
                median(&samples["acting_function"]),
                median(&samples["acting_cpu"]),
                median(&samples["screened_total"]),
                median(&samples["screened_cpu"]),
            );
        }
        counts.sort_unstable();
        let per_run = |name: &str| stats(runs.get(name).map(Vec::as_slice).unwrap_or(&[]));
        Ok(json!({
            "invocations": self.options.warm,
            "warm_up": WARM_UP,
            "acting": {
                "total_ms": per_run("acting_total"),
                "api_ms": per_run("acting_api"),
                "function_ms": per_run("acting_function"),
                "function_cpu_ms": per_run("acting_cpu"),
                "api_requests_median": counts.get(counts.len() / 2),
            },
            "screened": {
                "total_ms": per_run("screened_total"),
                "function_cpu_ms": per_run("screened_cpu"),
                "api_requests": screened_requests,
            },
        }))
    }

    /// The alert storm; `max_targets` is `MAX_TARGETS_PER_INVOCATION` (`None`: the
    /// default), `latency_ms` is injected on every API request.
    async fn storm(&self, max_targets: Option<usize>, latency_ms: u64) -> Result<Value, String> {
        let cap = max_targets.unwrap_or(DEFAULT_MAX_TARGETS);
        let acting = cap.min(STORM_TARGETS);
        let concurrency = self.options.concurrency;
        // Every target needs its GET (its state decides: cooldown, opt-in, escalation); the
        // first one's decision waits for the brakes (one round trip); only the targets within
        // the cap take budget slots, together once every target has decided (two round trips),
        // then PATCH and POST. Each phase spreads its requests over `concurrency` slots.
        let reads = STORM_TARGETS.div_ceil(concurrency);
        let writes = (acting * (REQUESTS_PER_TARGET - 1)).div_ceil(concurrency);
        let brakes_round_trip = 1;
        let floor_units = reads + brakes_round_trip + BUDGET_REQUESTS + writes;
        let request_count = acting * REQUESTS_PER_TARGET
            + (STORM_TARGETS - acting)
            + BRAKE_REQUESTS
            + BUDGET_REQUESTS;
        let floor_ms = (floor_units as u64 * latency_ms) as f64;

        let now = Utc::now();
        let label = match (max_targets, latency_ms) {
            (_, 0) => "storm without latency",
            (Some(_), _) => "storm",
            (None, _) => "capped",
        };
        let names: Vec<String> = (0..STORM_TARGETS).map(storm_name).collect();
        let (mut wall, mut rss) = (Vec::new(), Vec::new());
        let (mut function_cpu, mut server_cpu_ms) = (Vec::new(), Vec::new());
        let mut summary = Value::Null;
        let mut skip_reasons = Value::Null;
        let mut per_target = Value::Null;
        let mut shape = Value::Null;
        let mut logged = Vec::new();
        let (mut floors_here, mut ratios_here) = (Vec::new(), Vec::new());
        let server_pids = cluster::server_pids();
        let server_cpu = || -> Option<f64> {
            if server_pids.is_empty() {
                return None;
            }
            server_pids.iter().map(|pid| cpu_ms(Some(*pid))).sum()
        };
        for run in 0..self.options.runs {
            // A fresh namespace per run: its targets opted in, none in cooldown.
            let cluster = BenchCluster::start(&self.options.kubeconfig, "storm").await;
            cluster.seed(&names).await?;
            let mut vars = vec![
                ("MAX_ACTIONS_PER_WINDOW", STORM_BUDGET.to_owned()),
                ("MAX_CLUSTER_ACTIONS_PER_WINDOW", STORM_BUDGET.to_owned()),
                ("BUDGET_NAMESPACE", cluster.namespace().to_owned()),
            ];
            if let Some(n) = max_targets {
                vars.push(("MAX_TARGETS_PER_INVOCATION", n.to_string()));
            }
            let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let alerts: Vec<Value> = (0..STORM_ALERTS)
                .map(|i| storm_alert(cluster.namespace(), i, now))
                .collect();
            let messages = pack(alerts);
            let bytes = to_bytes(&sns_event(&messages, now));
            shape = json!({
                "records": messages.len(),
                "message_alerts": messages.iter().map(Vec::len).collect::<Vec<_>>(),
                "event_bytes": bytes.len(),
            });
            if latency_ms > 0 {
                cluster.answer_after(latency_ms);
            }
            cluster.clear_requests();
            let api = RuntimeApi::start().await.map_err(|e| e.to_string())?;
            let pending = api.invoke(bytes.clone(), INVOKE_TIMEOUT);
            let function = Function::launch(
                &self.options.bootstrap,
                &api,
                cluster.kubeconfig(),
                &vars,
                &self.work,
                &self.options.env,
            )?;
            let cpu_before = (cpu_ms(function.child.id()), server_cpu());
            let invoked = pending.await.map_err(|e| function.explain(&e))?;
            let cpu_after = (cpu_ms(function.child.id()), server_cpu());
            if let (Some(a), Some(b)) = (cpu_before.0, cpu_after.0) {
                function_cpu.push(b - a);
            }
            if let (Some(a), Some(b)) = (cpu_before.1, cpu_after.1) {
                server_cpu_ms.push(b - a);
            }
            let applied = acting;
            let blast = STORM_TARGETS - acting;
            let duplicates = STORM_ALERTS - STORM_TARGETS;
            let mut want = vec![("applied", applied), ("skipped", duplicates + blast)];
            want.retain(|(_, n)| *n > 0);
            expect_outcomes(&invoked, &want).map_err(|e| function.explain(&e))?;
            let rss_kib = function.peak_rss_kib().unwrap_or(0);
            wall.push(ms(invoked.duration()));
            rss.push(rss_kib as f64);
            summary = invoked.body["summary"].clone();
            skip_reasons = skip_reasons_of(&invoked);
            let requests = cluster.requests();
            per_target = requests_per_target(&requests);
            if latency_ms > 0 {
                let floor_here = floor_on_this_server_ms(&requests, latency_ms, concurrency);
                floors_here.push(floor_here);
                ratios_here.push(ms(invoked.duration()) / floor_here);
            }
            logged.extend(requests);
            eprintln!(
                "{label} {run}: {:.1} ms (floor {floor_ms:.0} ms), peak RSS {:.1} MiB, CPU: function {:.0} ms, API server {:.0} ms",
                ms(invoked.duration()),
                rss_kib as f64 / 1024.0,
                function_cpu.last().copied().unwrap_or(f64::NAN),
                server_cpu_ms.last().copied().unwrap_or(f64::NAN),
            );
        }
        let wall_stats = stats(&wall);
        let upstream_ms: Vec<f64> = logged.iter().map(server_ms).collect();
        Ok(json!({
            "alerts": STORM_ALERTS,
            "targets": STORM_TARGETS,
            "records": shape["records"],
            "message_alerts": shape["message_alerts"],
            "event_bytes": shape["event_bytes"],
            "max_targets": cap,
            "acting_targets": acting,
            "concurrency": concurrency,
            "latency_ms": latency_ms,
            "requests_per_acting_target": REQUESTS_PER_TARGET,
            "brake_requests": BRAKE_REQUESTS,
            "budget_requests": BUDGET_REQUESTS,
            "floor_round_trips": floor_units,
            "api_requests_floor": request_count,
            "floor_ms": floor_ms,
            "wall_ms": wall_stats,
            "ratio": if floor_ms > 0.0 { json!(median(&wall) / floor_ms) } else { Value::Null },
            "floor_on_this_server_ms": stats(&floors_here),
            "ratio_on_this_server": stats(&ratios_here),
            "function_cpu_ms": stats(&function_cpu),
            "server_cpu_ms": stats(&server_cpu_ms),
            "peak_rss_kib": stats(&rss),
            "server_ms_per_request": summary_stats(&upstream_ms),
            "requests_over_latency": upstream_ms.iter().filter(|t| **t > latency_ms as f64).count(),
            "requests_measured": upstream_ms.len(),
            "server_ms_by_request": server_ms_by_request(&logged),
            "summary": summary,
            "skip_reasons": skip_reasons,
            "requests_per_target": per_target,
        }))
    }

    /// The cold start as the AWS Lambda Runtime Interface Emulator reports it.
    async fn rie(&self) -> Result<Value, String> {
        if emulator_path().is_none() {
            eprintln!(
                "rie: the Lambda Runtime Interface Emulator is not installed (scripts/setup); skipped"
            );
            return Ok(Value::Null);
        }
        let cluster = BenchCluster::start(&self.options.kubeconfig, "rie").await;
        let names: Vec<String> = (0..self.options.runs)
            .map(|run| format!("rie-{run}"))
            .collect();
        cluster.seed(&names).await?;
        let kubeconfig = cluster.kubeconfig().display().to_string();
        let (mut init, mut invoke, mut client) = (Vec::new(), Vec::new(), Vec::new());
        for (run, name) in names.iter().enumerate() {
            let event = sns_event(
                &[vec![alert(cluster.namespace(), name, run, Utc::now())]],
                Utc::now(),
            );
            let mut env = vec![
                ("KUBECONFIG", kubeconfig.as_str()),
                ("DRY_RUN", "false"),
                ("MAX_ACTIONS_PER_WINDOW", "0"),
                ("MAX_CLUSTER_ACTIONS_PER_WINDOW", "0"),
            ];
            env.extend(
                self.options
                    .env
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            );
            let emulator = Emulator::start(&self.options.bootstrap, &env).await;
            let started = Instant::now();
            let (status, body) = emulator.invoke(&event).await;
            let elapsed = ms(started.elapsed());
            let logs = emulator.logs();
            let applied = body["summary"]["applied"].as_u64() == Some(1);
            if status != 200 || !applied {
                return Err(format!(
                    "rie run {run}: status {status}, answer {body}\n{logs}"
                ));
            }
            let init_ms = number_after(&logs, "INIT REPORT(durationMs: ")
                .ok_or_else(|| format!("no INIT REPORT in the emulator log:\n{logs}"))?;
            let invoke_ms = logs
                .lines()
                .find(|l| l.contains("INVOKE RTDONE("))
                .and_then(|line| number_after(line, "duration: "));
            init.push(init_ms);
            if let Some(v) = invoke_ms {
                invoke.push(v);
            }
            client.push(elapsed);
            eprintln!(
                "rie {run}: INIT {init_ms:.2} ms, invoke {:.2} ms, client round trip {elapsed:.2} ms",
                invoke_ms.unwrap_or(f64::NAN)
            );
        }
        Ok(json!({
            "init_ms": stats(&init),
            "invoke_ms": stats(&invoke),
            "client_ms": stats(&client),
        }))
    }
}

/// Skipped outcomes counted by the kind of reason (the text before its first `:`).
fn skip_reasons_of(invoked: &Invoked) -> Value {
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for outcome in invoked.body["outcomes"].as_array().into_iter().flatten() {
        if outcome["outcome"] == "skipped" {
            let reason = outcome["reason"].as_str().unwrap_or("");
            let kind = reason.split(':').next().unwrap_or(reason).trim();
            *reasons.entry(kind.to_owned()).or_default() += 1;
        }
    }
    json!(reasons)
}

/// Counts, per target Deployment, the API requests the fault proxy logged for it.
/// The floor again with each request costing what this server took for it when that was
/// longer than `latency_ms`: the storm's phases in order (the targets' reads, the brakes
/// read together, the budget's read then write, the changes and Events), each spread over
/// `concurrency` slots as the requests came. What the function adds is the rest.
fn floor_on_this_server_ms(log: &[RecordedRequest], latency_ms: u64, concurrency: usize) -> f64 {
    let cost = |r: &RecordedRequest| server_ms(r).max(latency_ms as f64);
    let written: Vec<&str> = log
        .iter()
        .filter(|r| r.method == "PATCH" && !r.path.contains("/deployments/"))
        .map(|r| r.path.as_str())
        .collect();
    let (mut reads, mut brakes, mut budget, mut changes) = (vec![], vec![], vec![], vec![]);
    for request in log {
        match (request.method.as_str(), request_subject(request).0) {
            ("GET", "deployment") => reads.push(cost(request)),
            (_, "deployment" | "event") => changes.push(cost(request)),
            _ if written.contains(&request.path.as_str()) => budget.push(cost(request)),
            _ => brakes.push(cost(request)),
        }
    }
    makespan(&reads, concurrency)
        + brakes.iter().copied().fold(0.0, f64::max)
        + budget.iter().sum::<f64>()
        + makespan(&changes, concurrency)
}

/// How long `costs` take in order on `slots` parallel slots, each taking the next request
/// as soon as it is free.
fn makespan(costs: &[f64], slots: usize) -> f64 {
    let mut free_at = vec![0.0_f64; slots.max(1)];
    for cost in costs {
        let slot = free_at
            .iter_mut()
            .min_by(|a, b| a.total_cmp(b))
            .expect("at least one slot");
        *slot += cost;
    }
    free_at.into_iter().fold(0.0, f64::max)
}

/// The API server's time for a logged request, in milliseconds.
fn server_ms(request: &RecordedRequest) -> f64 {
    request.upstream_us as f64 / 1000.0
}

/// The server's time per kind of request (`"PATCH deployment"`: median, p95, ...).
fn server_ms_by_request(log: &[RecordedRequest]) -> Value {
    let mut per: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for request in log {
        let (what, _) = request_subject(request);
        per.entry(format!("{} {what}", request.method))
            .or_default()
            .push(server_ms(request));
    }
    per.into_iter()
        .map(|(kind, times)| (kind, summary_stats(&times)))
        .collect()
}

/// What a request is about: (`deployment` | `event` | `other`, the object's name or path).
fn request_subject(request: &RecordedRequest) -> (&'static str, String) {
    let path = request.path.as_str();
    if let Some(i) = path.find("/deployments/") {
        ("deployment", path[i + "/deployments/".len()..].to_owned())
    } else if path.ends_with("/events") {
        (
            "event",
            request.body["regarding"]["name"]
                .as_str()
                .unwrap_or("?")
                .to_owned(),
        )
    } else {
        ("other", path.to_owned())
    }
}

/// Targets grouped by the requests made for them.
fn requests_per_target(log: &[RecordedRequest]) -> Value {
    let mut per: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for request in log {
        let method = request.method.as_str();
        let (what, name) = request_subject(request);
        *per.entry(name)
            .or_default()
            .entry(format!("{method} {what}"))
            .or_default() += 1;
    }
    // Targets that got the same requests, grouped: {"GET deployment, PATCH deployment, POST event": 200}.
    let mut shapes: BTreeMap<String, usize> = BTreeMap::new();
    for requests in per.values() {
        let shape = requests
            .iter()
            .map(|(k, n)| {
                if *n == 1 {
                    k.clone()
                } else {
                    format!("{n} x {k}")
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        *shapes.entry(shape).or_default() += 1;
    }
    json!(shapes)
}

/// Splits alerts into messages the way the template caps them.
fn pack(alerts: Vec<Value>) -> Vec<Vec<Value>> {
    let empty = message(&[]).to_string().len();
    let mut messages: Vec<Vec<Value>> = Vec::new();
    let mut size = usize::MAX;
    for alert in alerts {
        let len = alert.to_string().len() + 1;
        match messages.last_mut() {
            Some(last) if last.len() < MESSAGE_MAX_ALERTS && size + len < MESSAGE_MAX_BYTES => {
                last.push(alert);
                size += len;
            }
            _ => {
                messages.push(vec![alert]);
                size = empty + len;
            }
        }
    }
    messages
}

fn storm_name(i: usize) -> String {
    format!("storm-{i:03}")
}

/// Alert `i` of the storm: for target `i % STORM_TARGETS`, with its own fingerprint and the
/// generator URL Prometheus would give it.
fn storm_alert(namespace: &str, i: usize, now: DateTime<Utc>) -> Value {
    let target = storm_name(i % STORM_TARGETS);
    let mut alert = alert(namespace, &target, i, now);
    alert["generatorURL"] = json!(format!(
        "http://prometheus.monitoring:9090/graph?g0.expr=histogram_quantile%280.95%2C+sum+by+%28le%2C+destination_workload%29+%28rate%28istio_request_duration_milliseconds_bucket%7Bdestination_workload%3D%22{target}%22%7D%5B5m%5D%29%29%29+%3E+500&g0.tab=1"
    ));
    alert
}

/// The sample firing alert for `deployment` in `namespace`, the `index`-th of its kind.
fn alert(namespace: &str, deployment: &str, index: usize, now: DateTime<Utc>) -> Value {
    let mut alert = events::message(sample())["alerts"][0].clone();
    alert["labels"]["namespace"] = json!(namespace);
    alert["labels"]["deployment"] = json!(deployment);
    alert["labels"]["pod"] = json!(format!("{deployment}-7c9d8f6b5-{:05x}", index * 7919));
    alert["annotations"]["summary"] = json!(format!(
        "P95 latency {} ms on {deployment} in {namespace}",
        600 + index
    ));
    alert["startsAt"] = json!((now - chrono::Duration::minutes(5)).to_rfc3339());
    alert["fingerprint"] = json!(format!("{:016x}", 0x2289_218d_565d_99a5_u64 + index as u64));
    alert
}

/// An Alertmanager webhook-v4 message holding `alerts`, shaped like the sample's: common
/// labels and annotations are those all alerts share.
fn message(alerts: &[Value]) -> Value {
    let mut message = events::message(sample());
    let common = |field: &str| -> Value {
        let mut shared = alerts
            .first()
            .and_then(|a| a[field].as_object().cloned())
            .unwrap_or_default();
        shared.retain(|k, v| alerts.iter().all(|a| &a[field][k] == v));
        Value::Object(shared)
    };
    if !alerts.is_empty() {
        message["commonLabels"] = common("labels");
        message["commonAnnotations"] = common("annotations");
    }
    message["alerts"] = Value::Array(alerts.to_vec());
    message
}

/// `events/latency-restart-firing.json`, read once.
fn sample() -> &'static Value {
    static SAMPLE: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    SAMPLE.get_or_init(|| events::raw("latency-restart-firing.json"))
}

/// An SNS event with one record per message, published at `published`.
fn sns_event(messages: &[Vec<Value>], published: DateTime<Utc>) -> Value {
    let records: Vec<Value> = messages
        .iter()
        .enumerate()
        .map(|(i, alerts)| {
            let mut record = sample()["Records"][0].clone();
            record["Sns"]["MessageId"] = json!(format!("1b90641c-5715-5ab5-a60a-{i:012x}"));
            record["Sns"]["Timestamp"] = json!(published.to_rfc3339());
            record["Sns"]["Message"] = json!(message(alerts).to_string());
            record
        })
        .collect();
    json!({ "Records": records })
}

fn to_bytes(event: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(event).unwrap_or_default())
}

/// Checks the response's outcome counts, e.g. `[("applied", 200), ("skipped", 300)]`.
fn expect_outcomes(invoked: &Invoked, want: &[(&str, usize)]) -> Result<(), String> {
    if !invoked.ok {
        return Err(format!("invocation error: {}", invoked.body));
    }
    let mut got: BTreeMap<String, usize> = BTreeMap::new();
    for outcome in invoked.body["outcomes"].as_array().into_iter().flatten() {
        *got.entry(outcome["outcome"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    let want: BTreeMap<String, usize> = want.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect();
    if got == want {
        Ok(())
    } else {
        let reasons: Vec<&str> = invoked.body["outcomes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o["reason"].as_str())
            .take(5)
            .collect();
        Err(format!(
            "outcomes {got:?}, expected {want:?}; first reasons: {reasons:?}"
        ))
    }
}

struct Function {
    child: Child,
    spawned: Instant,
    log: PathBuf,
}

impl Function {
    /// Starts `bootstrap` as Lambda would (its environment, the runtime API address), with
    /// `DRY_RUN=false`, the cluster from `kubeconfig`, `vars`, then `extra` (`--env`).
    /// `MAX_CONCURRENCY` is passed on when set.
    fn launch(
        bootstrap: &Path,
        api: &RuntimeApi,
        kubeconfig: &Path,
        vars: &[(&str, &str)],
        work: &Path,
        extra: &[(String, String)],
    ) -> Result<Function, String> {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let log = work.join(format!(
            "function-{}.log",
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        let file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let err = file.try_clone().map_err(|e| e.to_string())?;
        let mut command = Command::new(bootstrap);
        command
            .env_clear()
            .env("AWS_LAMBDA_RUNTIME_API", api.address())
            .env("AWS_LAMBDA_FUNCTION_NAME", "latency-restart")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/latency-restart")
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "bench")
            .env("AWS_REGION", "us-east-1")
            .env("KUBECONFIG", kubeconfig)
            .env("DRY_RUN", "false")
            // The cluster budgets would stop the warm loop and the storm after 20 changes,
            // and add two requests (GET, PATCH of one contended ConfigMap) per change to the
            // figures; the bench measures the flow without them.
            .env("MAX_ACTIONS_PER_WINDOW", "0")
            .env("MAX_CLUSTER_ACTIONS_PER_WINDOW", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .kill_on_drop(true);
        if let Ok(v) = std::env::var("MAX_CONCURRENCY") {
            command.env("MAX_CONCURRENCY", v);
        }
        for (k, v) in vars {
            command.env(k, v);
        }
        for (k, v) in extra {
            command.env(k, v);
        }
        let spawned = Instant::now();
        let child = command
            .spawn()
            .map_err(|e| format!("{}: {e}", bootstrap.display()))?;
        Ok(Function {
            child,
            spawned,
            log,
        })
    }

    /// `VmHWM` of the process: its peak resident set so far, in KiB.
    fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// An error with the end of the function's log.
    fn explain(&self, error: &str) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "{error}\nfunction log ({}):\n{}",
            self.log.display(),
            tail.join("\n")
        )
    }
}

fn number_after(text: &str, marker: &str) -> Option<f64> {
    let rest = &text[text.find(marker)? + marker.len()..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// CPU time a process has used so far, in ms: the sum over its threads of the scheduler's
/// `sum_exec_runtime` (`/proc/<pid>/task/<tid>/schedstat`, nanoseconds).
fn cpu_ms(pid: Option<u32>) -> Option<f64> {
    let tasks = std::fs::read_dir(format!("/proc/{}/task", pid?)).ok()?;
    let mut ns = 0u64;
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        ns += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Some(ns as f64 / 1e6)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

/// [`stats`] without the samples (for thousands of them).
fn summary_stats(samples: &[f64]) -> Value {
    let mut figures = stats(samples);
    figures.as_object_mut().map(|o| o.remove("samples"));
    figures
}

fn stats(samples: &[f64]) -> Value {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = |q: f64| {
        sorted
            .get(((sorted.len().saturating_sub(1)) as f64 * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    json!({
        "n": samples.len(),
        "median": median(samples),
        "min": at(0.0),
        "p95": at(0.95),
        "max": at(1.0),
        "samples": samples,
    })
}
