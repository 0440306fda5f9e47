//! `kube-standin [--listen 127.0.0.1:6443] [--seed-demo] [--kubeconfig-out PATH] [--namespace NS]`
//!
//! Serves the Kubernetes API stand-in until killed (Ctrl-C / SIGTERM). `kube-standin
//! --print-demo` prints the demo mesh as a manifest stream instead, for a real cluster.

use std::net::SocketAddr;
use std::process::ExitCode;

fn usage() -> &'static str {
    "usage: kube-standin [--listen ADDR:PORT] [--seed-demo] [--kubeconfig-out PATH] [--namespace NS]\n\
     \n\
     --listen ADDR:PORT     where to listen (default 127.0.0.1:0, a random port)\n\
     --seed-demo            seed the demo mesh (namespace shop, kube-system)\n\
     --print-demo           print the demo mesh as a YAML stream (for kubectl apply) and exit\n\
     --kubeconfig-out PATH  write a kubeconfig pointing at the server\n\
     --namespace NS         namespace of the kubeconfig context (default: shop)\n"
}

fn main() -> ExitCode {
    let mut listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut seed_demo = false;
    let mut kubeconfig_out: Option<String> = None;
    let mut namespace = "shop".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => match args.next().map(|v| v.parse::<SocketAddr>()) {
                Some(Ok(addr)) => listen = addr,
                _ => {
                    eprintln!(
                        "kube-standin: --listen needs ADDR:PORT, e.g. 127.0.0.1:6443\n\n{}",
                        usage()
                    );
                    return ExitCode::from(2);
                }
            },
            "--seed-demo" => seed_demo = true,
            "--print-demo" => {
                for object in kube_standin::demo_mesh_objects() {
                    // JSON is YAML; one document per object.
                    println!("---\n{object}");
                }
                return ExitCode::SUCCESS;
            }
            "--kubeconfig-out" => match args.next() {
                Some(p) => kubeconfig_out = Some(p),
                None => {
                    eprintln!("kube-standin: --kubeconfig-out needs a path\n\n{}", usage());
                    return ExitCode::from(2);
                }
            },
            "--namespace" => match args.next() {
                Some(n) => namespace = n,
                None => {
                    eprintln!("kube-standin: --namespace needs a value\n\n{}", usage());
                    return ExitCode::from(2);
                }
            },
            "-h" | "--help" => {
                print!("{}", usage());
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("kube-standin: unknown argument {other:?}\n\n{}", usage());
                return ExitCode::from(2);
            }
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kube-standin: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let standin = match kube_standin::StandIn::start_on(listen).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("kube-standin: cannot listen on {listen}: {e}");
                return ExitCode::FAILURE;
            }
        };
        if seed_demo {
            kube_standin::seed_demo_mesh(&standin);
        }
        if let Some(path) = &kubeconfig_out
            && let Err(e) = std::fs::write(path, standin.kubeconfig_yaml(&namespace))
        {
            eprintln!("kube-standin: cannot write kubeconfig {path}: {e}");
            return ExitCode::FAILURE;
        }
        println!("{}", standin.url());
        let term = async {
            #[cfg(unix)]
            {
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(_) => std::future::pending::<()>().await,
                }
            }
            #[cfg(not(unix))]
            std::future::pending::<()>().await
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
        standin.shutdown().await;
        ExitCode::SUCCESS
    })
}
