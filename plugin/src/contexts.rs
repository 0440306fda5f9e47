//! The clusters a command works on: kubeconfig contexts, resolved as kubectl resolves them,
//! one client each with the user's own identity.

use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::cli::Target;
use crate::error::OpError;

/// Per-request timeout: an operator waits at a terminal.
const API_TIMEOUT: Duration = Duration::from_secs(15);

/// One cluster, as one kubeconfig context reaches it.
#[derive(Clone)]
pub struct Context {
    /// The context's name (how output names the cluster).
    pub name: String,
    /// The context's default namespace, else `default`.
    pub namespace: String,
    /// The user's client for it.
    pub client: kube::Client,
}

/// Which contexts `target` asks for, from `available` (in kubeconfig order) and the current
/// one: pure, so the choice is tested without a kubeconfig.
pub fn choose(
    target: &Target,
    available: &[String],
    current: Option<&str>,
) -> Result<Vec<String>, OpError> {
    let listed = || {
        if available.is_empty() {
            "no contexts".to_owned()
        } else {
            available.join(", ")
        }
    };
    if target.all_contexts {
        if available.is_empty() {
            return Err(OpError::Kubeconfig("it has no contexts".into()));
        }
        return Ok(available.to_vec());
    }
    if target.contexts.is_empty() {
        let current = current.ok_or_else(|| {
            OpError::Usage(format!(
                "the kubeconfig sets no current context: pass --context (one of: {})",
                listed()
            ))
        })?;
        return choose_named(&[current.to_owned()], available, listed);
    }
    choose_named(&target.contexts, available, listed)
}

fn choose_named(
    names: &[String],
    available: &[String],
    listed: impl Fn() -> String,
) -> Result<Vec<String>, OpError> {
    let mut chosen: Vec<String> = Vec::new();
    for name in names {
        if !available.contains(name) {
            return Err(OpError::MissingContext {
                name: name.clone(),
                available: listed(),
            });
        }
        if !chosen.contains(name) {
            chosen.push(name.clone());
        }
    }
    Ok(chosen)
}

/// Reads the kubeconfig (`--kubeconfig`, else `$KUBECONFIG`, else `~/.kube/config`) and
/// builds a client for each context asked for.
pub async fn connect(target: &Target) -> Result<Vec<Context>, OpError> {
    let kubeconfig = match &target.kubeconfig {
        Some(path) => Kubeconfig::read_from(path)
            .map_err(|err| OpError::Kubeconfig(format!("{}: {err}", path.display())))?,
        None => Kubeconfig::read().map_err(|err| OpError::Kubeconfig(err.to_string()))?,
    };
    let available: Vec<String> = kubeconfig.contexts.iter().map(|c| c.name.clone()).collect();
    let names = choose(target, &available, kubeconfig.current_context.as_deref())?;
    let mut contexts = Vec::new();
    for name in names {
        let options = KubeConfigOptions {
            context: Some(name.clone()),
            ..KubeConfigOptions::default()
        };
        let mut config = kube::Config::from_custom_kubeconfig(kubeconfig.clone(), &options)
            .await
            .map_err(|err| OpError::Kubeconfig(format!("context {name}: {err}")))?;
        mesh_remediation::cluster::connect::tune(&mut config, API_TIMEOUT);
        let namespace = config.default_namespace.clone();
        let client = kube::Client::try_from(config)
            .map_err(|err| OpError::Kubeconfig(format!("context {name}: {err}")))?;
        contexts.push(Context {
            name,
            namespace,
            client,
        });
    }
    Ok(contexts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(contexts: &[&str], all: bool) -> Target {
        Target {
            kubeconfig: None,
            contexts: contexts.iter().map(|c| (*c).to_owned()).collect(),
            all_contexts: all,
        }
    }

    #[test]
    fn contexts_are_the_current_one_the_named_ones_or_all() {
        let available = vec!["use1".to_owned(), "usw2".to_owned()];
        assert_eq!(
            choose(&target(&[], false), &available, Some("usw2")).expect("current"),
            vec!["usw2"]
        );
        assert_eq!(
            choose(&target(&["usw2", "use1", "usw2"], false), &available, None).expect("named"),
            vec!["usw2", "use1"]
        );
        assert_eq!(
            choose(&target(&[], true), &available, None).expect("all"),
            available
        );
        let missing = choose(&target(&["euw1"], false), &available, None)
            .expect_err("not in the kubeconfig")
            .to_string();
        assert_eq!(
            missing,
            "context \"euw1\" is not in the kubeconfig; it has: use1, usw2"
        );
        assert!(choose(&target(&[], false), &available, None).is_err());
    }
}
