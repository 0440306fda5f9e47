//! The command line, as `kubectl mesh-remediation --help` shows it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// What the mesh auto-remediation functions did across your clusters, and every switch in
/// one place: history, hand-offs, pauses, budgets, reverts and drills.
///
/// Reads and writes what the functions read and write (the action record on each object,
/// the pause annotations and switch, the budget ConfigMap), with your kubeconfig identity.
#[derive(Debug, Parser)]
#[command(
    name = "kubectl mesh-remediation",
    bin_name = "kubectl mesh-remediation",
    version
)]
pub struct Cli {
    #[command(flatten)]
    pub target: Target,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    #[command(subcommand)]
    pub command: Command,
}

/// Which clusters: kubeconfig contexts.
#[derive(Debug, Args)]
pub struct Target {
    /// Kubeconfig file (default: $KUBECONFIG, a list merged as kubectl merges it, else
    /// ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// Context to use; repeat for several clusters (default: the current context).
    #[arg(long = "context", global = true)]
    pub contexts: Vec<String>,
    /// Every context of the kubeconfig.
    #[arg(long, global = true, conflicts_with = "contexts")]
    pub all_contexts: bool,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// JSON, one document.
    Json,
    /// YAML, one document.
    Yaml,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every object carrying an action record: function, when, alert, trace id, change, state.
    Status(Query),
    /// Like status, limited to recent actions (default: the last 24 hours).
    History {
        /// How far back: 90s, 30m, 24h, 7d.
        #[arg(long, default_value = "24h", value_parser = parse_age)]
        since: chrono::Duration,
        #[command(flatten)]
        query: Query,
    },
    /// What is handed off to a person: by which function and alert, since when.
    Escalated(Scope),
    /// Hands an escalated object back to the functions (removes its escalation annotation).
    Ack(ObjectRef),
    /// Pauses the functions: a whole cluster (--cluster), a namespace (-n) or one object.
    Pause {
        /// The object to pause (KIND/NAME, e.g. deployment/checkout-v2); none: the namespace.
        object: Option<String>,
        /// Namespace of the object, or the namespace to pause.
        #[arg(short, long)]
        namespace: Option<String>,
        /// Pause every function in every namespace of the cluster.
        #[arg(long, conflicts_with_all = ["object", "namespace"])]
        cluster: bool,
        /// Why (shown in every skipped alert's report, so nobody forgets to lift it).
        #[arg(long)]
        reason: String,
    },
    /// Lifts a pause set by `pause` (same arguments, no reason).
    Resume {
        /// The object to resume (KIND/NAME); none: the namespace.
        object: Option<String>,
        /// Namespace of the object, or the namespace to resume.
        #[arg(short, long)]
        namespace: Option<String>,
        /// Lift the cluster-wide pause.
        #[arg(long, conflicts_with_all = ["object", "namespace"])]
        cluster: bool,
    },
    /// Every pause in force, and objects that accept only some remediations.
    Paused,
    /// Budget spending per function and cluster-wide, and when slots free up.
    Budget(BudgetArgs),
    /// Restores the recorded previous configuration through the functions' own revert code:
    /// a server-side dry run unless --apply; refuses after a foreign edit.
    Revert {
        #[command(flatten)]
        object: ObjectRef,
        /// Whose action to revert, when several functions acted on the object.
        #[arg(long)]
        function: Option<String>,
        /// Why (kept in the record and the Kubernetes Event).
        #[arg(
            long,
            default_value = "reverted by an operator with kubectl mesh-remediation"
        )]
        reason: String,
        /// Revert only if the last action is this trace id.
        #[arg(long)]
        trace_id: Option<String>,
        /// Write the revert (default: the API server's dry run only).
        #[arg(long)]
        apply: bool,
    },
    /// Sends a drill alert (always a dry run in the function) through the real path.
    Drill(DrillArgs),
}

/// Which records.
#[derive(Debug, Args)]
pub struct Query {
    #[command(flatten)]
    pub scope: Scope,
    /// Only this function's records.
    #[arg(long)]
    pub function: Option<String>,
}

/// Which namespaces.
#[derive(Debug, Args)]
pub struct Scope {
    /// Only this namespace (default: all).
    #[arg(short, long)]
    pub namespace: Option<String>,
}

/// One object.
#[derive(Debug, Args)]
pub struct ObjectRef {
    /// KIND/NAME: deployment/NAME, virtualservice/NAME (vs), destinationrule/NAME (dr).
    pub object: String,
    /// Namespace (default: the context's, else `default`).
    #[arg(short, long)]
    pub namespace: Option<String>,
}

#[derive(Debug, Args)]
pub struct BudgetArgs {
    /// Namespace of the budget ConfigMap (the functions' BUDGET_NAMESPACE).
    #[arg(
        long,
        env = "BUDGET_NAMESPACE",
        default_value = "kube-system",
        global = true
    )]
    pub budget_namespace: String,
    /// The functions' BUDGET_WINDOW_SECONDS.
    #[arg(
        long,
        env = "BUDGET_WINDOW_SECONDS",
        default_value_t = 3600,
        global = true
    )]
    pub window_seconds: u64,
    /// The functions' MAX_ACTIONS_PER_WINDOW (0: off).
    #[arg(
        long,
        env = "MAX_ACTIONS_PER_WINDOW",
        default_value_t = 20,
        global = true
    )]
    pub max_per_function: usize,
    /// The functions' MAX_CLUSTER_ACTIONS_PER_WINDOW (0: off).
    #[arg(
        long,
        env = "MAX_CLUSTER_ACTIONS_PER_WINDOW",
        default_value_t = 40,
        global = true
    )]
    pub max_cluster: usize,
    #[command(subcommand)]
    pub action: Option<BudgetAction>,
}

#[derive(Debug, Subcommand)]
pub enum BudgetAction {
    /// Gives FUNCTION its whole budget back (empties its key in the ConfigMap).
    Reset {
        /// latency-restart, error-rollback, db-circuit-break or region-failover.
        function: String,
    },
}

#[derive(Debug, Args)]
pub struct DrillArgs {
    /// The function to drill.
    pub function: String,
    /// Namespace of the target.
    #[arg(short, long)]
    pub namespace: String,
    /// The alert topic to publish to (set AWS_ENDPOINT_URL for an emulator).
    #[arg(long, env = "ALERT_TOPIC_ARN", required_unless_present = "invoke")]
    pub topic: Option<String>,
    /// Invoke this Lambda function (name, ARN or alias ARN) with the SNS event the topic
    /// would deliver, wait for it and show its outcome (lambda:InvokeFunction; set
    /// AWS_ENDPOINT_URL for the Lambda runtime emulator, whose function is `function`).
    #[arg(long, value_name = "FUNCTION", conflicts_with = "topic")]
    pub invoke: Option<String>,
    /// With --topic: wait up to SECONDS (default 120) for the function's outcome, read from
    /// its log group (logs:FilterLogEvents) by the message's id.
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "120", requires = "topic")]
    pub wait: Option<u64>,
    /// The function's log group for --wait (default /aws/lambda/STACK-FUNCTION, as the
    /// template names it).
    #[arg(long, requires = "wait")]
    pub log_group: Option<String>,
    /// The stack the function belongs to, for its log group.
    #[arg(long, default_value = "mesh-remediation")]
    pub stack: String,
    /// latency-restart: the Deployment.
    #[arg(long)]
    pub deployment: Option<String>,
    /// The mesh service (error-rollback, region-failover).
    #[arg(long)]
    pub service: Option<String>,
    /// db-circuit-break: the database host.
    #[arg(long)]
    pub db_host: Option<String>,
    /// error-rollback: the failing version.
    #[arg(long)]
    pub version: Option<String>,
    /// region-failover: the degraded region.
    #[arg(long)]
    pub region: Option<String>,
    /// The EKS cluster, when the function serves several.
    #[arg(long)]
    pub cluster: Option<String>,
}

impl DrillArgs {
    /// The alert labels naming the target.
    pub fn labels(&self) -> std::collections::BTreeMap<String, String> {
        [
            ("deployment", &self.deployment),
            ("service", &self.service),
            ("db_host", &self.db_host),
            ("version", &self.version),
            ("region", &self.region),
            ("cluster", &self.cluster),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_owned(), v.clone())))
        .collect()
    }
}

/// `90s`, `30m`, `24h`, `7d`.
pub fn parse_age(raw: &str) -> Result<chrono::Duration, String> {
    let bad = || format!("{raw:?} is not an age like 90s, 30m, 24h or 7d");
    let split = raw.len().checked_sub(1).ok_or_else(bad)?;
    let (number, unit) = raw.split_at(split);
    let number: i64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    number
        .checked_mul(seconds)
        .filter(|s| *s >= 0)
        .map(chrono::Duration::seconds)
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_command_has_help_and_the_definition_is_consistent() {
        Cli::command().debug_assert();
        let mut cli = Cli::command();
        for sub in cli.get_subcommands_mut() {
            let help = sub.render_long_help().to_string();
            assert!(help.contains("Usage:"), "{help}");
            assert!(sub.get_about().is_some(), "{} has no help", sub.get_name());
        }
    }

    #[test]
    fn ages_read_like_kubectl_durations() {
        assert_eq!(parse_age("24h"), Ok(chrono::Duration::hours(24)));
        assert_eq!(parse_age("90s"), Ok(chrono::Duration::seconds(90)));
        assert_eq!(parse_age("7d"), Ok(chrono::Duration::days(7)));
        assert!(parse_age("h").is_err());
        assert!(parse_age("10y").is_err());
        assert!(parse_age("").is_err());
    }
}
