//! Each command: which contexts, what to ask each, how to print the answers. A context
//! that fails is named on stderr; the others' answers are still printed.

use std::time::Duration;

use mesh_remediation::guard::budget::Limits;

use crate::cli::{BudgetAction, BudgetArgs, Cli, Command, Format, ObjectRef, Query, Scope};
use crate::contexts::{self, Context};
use crate::error::OpError;
use crate::output;
use crate::records::{self, ActionRow, HandOffRow, PauseRow};
use crate::revert::{self, Ask};
use crate::switches;
use crate::tables::OutcomeRow;
use crate::{budget, drill, each, library_config, objects};

/// What a command printed and what went wrong.
#[derive(Debug, Default)]
pub struct Done {
    /// For stdout.
    pub text: String,
    /// For stderr, one line each.
    pub errors: Vec<OpError>,
    /// Whether the command's own result is a failure (a failed revert, a failed drill).
    pub failed: bool,
}

impl Done {
    fn error(err: OpError) -> Done {
        Done {
            errors: vec![err],
            ..Done::default()
        }
    }
}

/// Runs one command line.
pub async fn run(cli: Cli) -> Done {
    // A drill needs no cluster: it goes to the alert topic or the function.
    if let Command::Drill(args) = &cli.command {
        return match drill::send(args).await {
            Ok(sent) => drilled(&sent, cli.output),
            Err(err) => Done::error(err),
        };
    }
    let contexts = match contexts::connect(&cli.target).await {
        Ok(contexts) => contexts,
        Err(err) => return Done::error(err),
    };
    let format = cli.output;
    match cli.command {
        Command::Status(query) => actions(&contexts, &query, None, format).await,
        Command::History { since, query } => {
            actions(&contexts, &query, Some(chrono::Utc::now() - since), format).await
        }
        Command::Escalated(scope) => escalated(&contexts, &scope, format).await,
        Command::Ack(object) => {
            let done = per_object(
                &contexts,
                &object,
                |context, resource, ns, name| async move {
                    switches::ack(context, &resource, ns, &name).await?;
                    Ok(format!(
                        "[{}] {} handed back to the functions",
                        context.name,
                        objects::describe(&resource, ns, &name)
                    ))
                },
            );
            done.await
        }
        Command::Pause {
            object,
            namespace,
            cluster,
            reason,
        } => switch(&contexts, object, namespace, cluster, Some(reason)).await,
        Command::Resume {
            object,
            namespace,
            cluster,
        } => switch(&contexts, object, namespace, cluster, None).await,
        Command::Paused => {
            let mut done = Done::default();
            let rows: Vec<PauseRow> = gather(&mut done, each(&contexts, switches::paused).await);
            done.text = output::render(
                &rows,
                format,
                "No pauses: the functions may act everywhere they are opted in.",
            );
            done
        }
        Command::Budget(args) => budget_command(&contexts, &args, format).await,
        Command::Revert {
            object,
            function,
            reason,
            trace_id,
            apply,
        } => {
            let ask = |resource, namespace: &str, name: String| Ask {
                resource,
                namespace: namespace.to_owned(),
                name,
                function: function.clone(),
                reason: reason.clone(),
                trace_id: trace_id.clone(),
                apply,
            };
            reverted(&contexts, &object, ask, format).await
        }
        Command::Drill(_) => Done::default(),
    }
}

/// Collects each context's rows; its failure goes to `done.errors`.
fn gather<T>(done: &mut Done, results: Vec<Result<Vec<T>, OpError>>) -> Vec<T> {
    let mut rows = Vec::new();
    for result in results {
        match result {
            Ok(mut more) => rows.append(&mut more),
            Err(err) => done.errors.push(err),
        }
    }
    rows
}

async fn actions(
    contexts: &[Context],
    query: &Query,
    since: Option<chrono::DateTime<chrono::Utc>>,
    format: Format,
) -> Done {
    let mut done = Done::default();
    let config = match library_config() {
        Ok(config) => config,
        Err(err) => return Done::error(err),
    };
    let namespace = query.scope.namespace.as_deref();
    let function = query.function.as_deref();
    let results = each(contexts, |context| {
        let config = &config;
        async move {
            let mut rows = Vec::new();
            for resource in objects::kinds(config) {
                let found = objects::list(context, &resource, namespace).await?;
                rows.extend(records::actions(
                    &context.name,
                    &resource,
                    &found,
                    function,
                    since,
                ));
            }
            Ok(rows)
        }
    })
    .await;
    let mut rows: Vec<ActionRow> = gather(&mut done, results);
    rows.sort_by_key(|row| std::cmp::Reverse(row.at));
    done.text = output::render(&rows, format, "No action recorded.");
    done
}

async fn escalated(contexts: &[Context], scope: &Scope, format: Format) -> Done {
    let mut done = Done::default();
    let config = match library_config() {
        Ok(config) => config,
        Err(err) => return Done::error(err),
    };
    let namespace = scope.namespace.as_deref();
    let results = each(contexts, |context| {
        let config = &config;
        async move {
            let mut rows = Vec::new();
            for resource in objects::kinds(config) {
                let found = objects::list(context, &resource, namespace).await?;
                rows.extend(records::hand_offs(&context.name, &resource, &found));
            }
            Ok(rows)
        }
    })
    .await;
    let rows: Vec<HandOffRow> = gather(&mut done, results);
    done.text = output::render(&rows, format, "Nothing is handed off to a person.");
    done
}

/// Runs `work` on one object in every context; prints each one's line.
async fn per_object<'a, F, Fut>(contexts: &'a [Context], object: &'a ObjectRef, work: F) -> Done
where
    F: Fn(&'a Context, kube::api::ApiResource, &'a str, String) -> Fut,
    Fut: std::future::Future<Output = Result<String, OpError>>,
{
    let (resource, name) = match resolve(&object.object) {
        Ok(parsed) => parsed,
        Err(err) => return Done::error(err),
    };
    let results = each(contexts, |context| {
        let namespace = object.namespace.as_deref().unwrap_or(&context.namespace);
        work(context, resource.clone(), namespace, name.clone())
    })
    .await;
    let mut done = Done::default();
    for result in results {
        match result {
            Ok(line) => done.text.push_str(&format!("{line}\n")),
            Err(err) => done.errors.push(err),
        }
    }
    done
}

async fn switch(
    contexts: &[Context],
    object: Option<String>,
    namespace: Option<String>,
    cluster: bool,
    reason: Option<String>,
) -> Done {
    let verb = if reason.is_some() {
        "paused"
    } else {
        "resumed"
    };
    let scope = |context: &Context| -> Result<switches::Scope, OpError> {
        if cluster {
            return Ok(switches::Scope::Cluster);
        }
        match (&object, &namespace) {
            (Some(object), namespace) => {
                let (resource, name) = resolve(object)?;
                Ok(switches::Scope::Object {
                    resource,
                    namespace: namespace
                        .clone()
                        .unwrap_or_else(|| context.namespace.clone()),
                    name,
                })
            }
            (None, Some(namespace)) => Ok(switches::Scope::Namespace(namespace.clone())),
            (None, None) => Err(OpError::Usage(
                "say what: --cluster, -n NAMESPACE, or KIND/NAME [-n NAMESPACE]".into(),
            )),
        }
    };
    let results = each(contexts, |context| {
        let scope = scope(context);
        let reason = reason.clone();
        async move {
            let scope = scope?;
            switches::set_pause(context, &scope, reason.as_deref()).await?;
            Ok(format!("[{}] {verb}: {}", context.name, scope.describe()))
        }
    })
    .await;
    let mut done = Done::default();
    for result in results {
        match result {
            Ok(line) => done.text.push_str(&format!("{line}\n")),
            Err(err) => done.errors.push(err),
        }
    }
    done
}

async fn budget_command(contexts: &[Context], args: &BudgetArgs, format: Format) -> Done {
    let limits = Limits {
        window: Duration::from_secs(args.window_seconds),
        per_function: args.max_per_function,
        cluster: args.max_cluster,
        namespace: args.budget_namespace.clone(),
    };
    let mut done = Done::default();
    match &args.action {
        None => {
            let rows = gather(
                &mut done,
                each(contexts, |c| budget::show(c, &limits)).await,
            );
            done.text = output::render(&rows, format, "No budget found.");
        }
        Some(BudgetAction::Reset { function }) => {
            for (context, result) in contexts
                .iter()
                .zip(each(contexts, |c| budget::reset(c, &limits, function)).await)
            {
                match result {
                    Ok(()) => done.text.push_str(&format!(
                        "[{}] budget of {function} reset: its changes no longer count\n",
                        context.name
                    )),
                    Err(err) => done.errors.push(err),
                }
            }
        }
    }
    done
}

async fn reverted(
    contexts: &[Context],
    object: &ObjectRef,
    ask: impl Fn(kube::api::ApiResource, &str, String) -> Ask,
    format: Format,
) -> Done {
    let (resource, name) = match resolve(&object.object) {
        Ok(parsed) => parsed,
        Err(err) => return Done::error(err),
    };
    let results = each(contexts, |context| {
        let namespace = object.namespace.as_deref().unwrap_or(&context.namespace);
        let ask = ask(resource.clone(), namespace, name.clone());
        async move { revert::revert(context, &ask).await }
    })
    .await;
    let mut done = Done::default();
    let mut rows = Vec::new();
    for (context, result) in contexts.iter().zip(results) {
        match result {
            Ok(report) => {
                let report = serde_json::to_value(&report).unwrap_or_default();
                for outcome in report["outcomes"].as_array().into_iter().flatten() {
                    done.failed |= outcome["outcome"] == "failed";
                    rows.push(OutcomeRow {
                        context: context.name.clone(),
                        outcome: outcome.clone(),
                    });
                }
            }
            // Over several clusters an object may live in some only, as a revert request
            // for `all` clusters skips a cluster without it.
            Err(OpError::NotFound { object, .. }) if contexts.len() > 1 => {
                rows.push(OutcomeRow {
                    context: context.name.clone(),
                    outcome: serde_json::json!({
                        "outcome": "skipped",
                        "target": object,
                        "reason": "not in this cluster",
                    }),
                });
            }
            Err(err) => done.errors.push(err),
        }
    }
    // A context that could not run the revert has said why on stderr; "No outcome." would
    // only repeat it.
    if !rows.is_empty() || done.errors.is_empty() {
        done.text = outcomes_text(&rows, format);
    }
    done
}

/// Outcomes as a table followed by each patch sent (or that a dry run would send).
fn outcomes_text(rows: &[OutcomeRow], format: Format) -> String {
    let mut text = output::render(rows, format, "No outcome.");
    if format == Format::Table {
        for row in rows.iter().filter(|r| !r.outcome["patch"].is_null()) {
            text.push_str(&format!(
                "\n[{}] {} patch:\n{}",
                row.context,
                row.outcome["outcome"].as_str().unwrap_or_default(),
                output::json(&row.outcome["patch"])
            ));
        }
    }
    text
}

fn drilled(sent: &drill::Sent, format: Format) -> Done {
    let mut done = Done::default();
    if format != Format::Table {
        done.text = match format {
            Format::Yaml => output::yaml(sent),
            _ => output::json(sent),
        };
    } else if let (Some(id), None) = (&sent.message_id, &sent.answer) {
        done.text = format!(
            "drill published: MessageId {id}, alert fingerprint {}\nthe function's report (outcome attribute, drill=passed|failed) goes to its notification topic; its log line carries the fingerprint (--wait reads it from there)\n",
            sent.fingerprint
        );
    }
    if let Some(answer) = &sent.answer {
        let rows: Vec<OutcomeRow> = answer["outcomes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|o| OutcomeRow {
                context: sent.function.clone(),
                outcome: o.clone(),
            })
            .collect();
        done.failed = rows.is_empty() || rows.iter().any(|r| r.outcome["outcome"] == "failed");
        if format == Format::Table {
            done.text = match &sent.message_id {
                Some(id) => format!(
                    "{} answered the drill {} (MessageId {id}; from its log group):\n",
                    sent.function, sent.fingerprint
                ),
                None => format!(
                    "{} answered the drill {}:\n",
                    sent.function, sent.fingerprint
                ),
            };
            done.text.push_str(&if rows.is_empty() {
                output::json(answer)
            } else {
                outcomes_text(&rows, format)
            });
        }
    }
    done
}

/// `KIND/NAME` as the API resource and name the functions' configuration knows it by.
fn resolve(object: &str) -> Result<(kube::api::ApiResource, String), OpError> {
    objects::parse_ref(&library_config()?, object)
}
