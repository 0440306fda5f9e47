//! `kubectl mesh-remediation`: an operator's view of the mesh auto-remediation functions
//! across a fleet, and every switch in one place.
//!
//! It reads and writes what the functions read and write, through the functions' own
//! library (`mesh-remediation`): the action record, the escalation hand-off, the pauses, the
//! budgets, the revert request and the drill alert. It cannot disagree with them.

use std::future::Future;
use std::process::ExitCode;

use clap::Parser;
use mesh_remediation::config::Config;

mod budget;
mod cli;
mod commands;
mod contexts;
mod drill;
mod error;
mod objects;
mod output;
mod records;
mod revert;
mod switches;
mod tables;

use cli::Cli;
use error::OpError;

/// Runs the command line `args` (the program name first); what `main` returns.
pub async fn main_with(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return ExitCode::from(u8::try_from(err.exit_code()).unwrap_or(2));
        }
    };
    let outcome = commands::run(cli).await;
    print!("{}", outcome.text);
    for err in &outcome.errors {
        let hint = if err.retryable() {
            " (transient: running it again may succeed)"
        } else {
            ""
        };
        eprintln!("error: {err}{hint}");
    }
    if outcome.errors.is_empty() && !outcome.failed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The library's configuration as the plugin uses it: the functions' defaults, the Istio
/// and namespace settings from the environment, and `overrides`. Never the functions'
/// cluster list or sinks: the plugin reaches clusters through kubeconfig contexts.
pub(crate) fn library_config_with(overrides: &[(&str, &str)]) -> Result<Config, OpError> {
    const PASSED: [&str; 4] = [
        "ISTIO_API_VERSION",
        "ISTIO_ROOT_NAMESPACE",
        "PROTECTED_NAMESPACES",
        "ALLOWED_NAMESPACES",
    ];
    Ok(Config::from_lookup(|name| {
        overrides
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
            .or_else(|| {
                PASSED
                    .contains(&name)
                    .then(|| std::env::var(name).ok())
                    .flatten()
            })
    })?)
}

/// [`library_config_with`] without overrides.
pub(crate) fn library_config() -> Result<Config, OpError> {
    library_config_with(&[])
}

/// Runs `work` in every context at once; the results in context order.
pub(crate) async fn each<'a, T, F, Fut>(
    contexts: &'a [contexts::Context],
    work: F,
) -> Vec<Result<T, OpError>>
where
    F: Fn(&'a contexts::Context) -> Fut,
    Fut: Future<Output = Result<T, OpError>>,
{
    futures::future::join_all(contexts.iter().map(work)).await
}
