//! `revert`: the functions' own revert request, run here with the operator's identity. The
//! request goes through the library's pipeline exactly as a function handles one (the same
//! guards: opted in, the record's last action, no foreign edit since, `resourceVersion`),
//! and a server-side dry run unless `--apply`.

use std::sync::Arc;

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::api::{Api, ApiResource, PostParams};
use mesh_remediation::cluster::connect::KubeConnector;
use mesh_remediation::cluster::record::ActionRecord;
use mesh_remediation::intake::{KNOWN_REMEDIATIONS, RevertRequest};
use mesh_remediation::pipeline::{Invocation, Pipeline};
use mesh_remediation::remediation::{
    DbCircuitBreak, ErrorRollback, LatencyRestart, RegionFailover, Remediation,
};
use mesh_remediation::report::InvocationReport;

use crate::contexts::Context;
use crate::error::OpError;
use crate::objects::{self, describe};

/// What the operator asked to revert.
#[derive(Debug, Clone)]
pub struct Ask {
    /// The object's kind.
    pub resource: ApiResource,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Whose action, when given.
    pub function: Option<String>,
    /// Why.
    pub reason: String,
    /// Only if the last action is this one.
    pub trace_id: Option<String>,
    /// Write it (else a server-side dry run).
    pub apply: bool,
}

/// Hands the pipeline the operator's client.
struct Operator(kube::Client);

impl KubeConnector for Operator {
    fn client(&self) -> BoxFuture<'_, mesh_remediation::Result<kube::Client>> {
        let client = self.0.clone();
        Box::pin(async move { Ok(client) })
    }
}

/// Which function's action to revert: the one asked for, else the only one recorded.
pub fn whose(
    object: &kube::api::DynamicObject,
    asked: Option<&str>,
) -> Result<&'static str, String> {
    let annotations = object.metadata.annotations.as_ref();
    let recorded: Vec<&'static str> = KNOWN_REMEDIATIONS
        .iter()
        .copied()
        .filter(|r| !matches!(ActionRecord::from_annotations(annotations, r), Ok(None)))
        .collect();
    match (asked, recorded.as_slice()) {
        (Some(asked), _) => KNOWN_REMEDIATIONS
            .iter()
            .copied()
            .find(|r| *r == asked)
            .ok_or_else(|| {
                format!(
                    "unknown function {asked:?} (expected one of: {})",
                    KNOWN_REMEDIATIONS.join(", ")
                )
            }),
        (None, []) => Err(
            "carries no action record (annotation auto-remediation.io/<function>); nothing to revert"
                .to_owned(),
        ),
        (None, [only]) => Ok(only),
        (None, several) => Err(format!(
            "carries records of {}; say which with --function",
            several.join(" and ")
        )),
    }
}

/// Reverts in one cluster: the function's report of it.
pub async fn revert(context: &Context, ask: &Ask) -> Result<InvocationReport, OpError> {
    let object = objects::get(context, &ask.resource, &ask.namespace, &ask.name).await?;
    let function = whose(&object, ask.function.as_deref()).map_err(|what| OpError::Nothing {
        context: context.name.clone(),
        object: describe(&ask.resource, &ask.namespace, &ask.name),
        what,
    })?;
    let request = RevertRequest {
        remediation: function.to_owned(),
        namespace: ask.namespace.clone(),
        kind: ask.resource.kind.clone(),
        name: ask.name.clone(),
        reason: ask.reason.clone(),
        trace_id: ask.trace_id.clone(),
        requested_by: Some(identity(context).await),
        dry_run: !ask.apply,
        cluster: None,
    };
    let event = serde_json::json!({ "revert": request });
    let config =
        crate::library_config_with(&[("DRY_RUN", if ask.apply { "false" } else { "true" })])?;
    let connector: Arc<dyn KubeConnector> = Arc::new(Operator(context.client.clone()));
    let trace = format!(
        "kubectl-mesh-remediation-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ")
    );
    let invocation = Invocation::new(&trace, None, None);
    Ok(match function {
        "latency-restart" => run(config, LatencyRestart, connector, &event, &invocation).await,
        "error-rollback" => run(config, ErrorRollback, connector, &event, &invocation).await,
        "db-circuit-break" => {
            run(
                config,
                DbCircuitBreak::from_env()?,
                connector,
                &event,
                &invocation,
            )
            .await
        }
        _ => {
            run(
                config,
                RegionFailover::from_env()?,
                connector,
                &event,
                &invocation,
            )
            .await
        }
    })
}

async fn run<R: Remediation>(
    config: mesh_remediation::config::Config,
    remediation: R,
    connector: Arc<dyn KubeConnector>,
    event: &serde_json::Value,
    invocation: &Invocation,
) -> InvocationReport {
    Pipeline::new(config, remediation, connector)
        .handle(event, invocation)
        .await
}

/// Who the API server says the operator is (`kubectl auth whoami`), for the record.
async fn identity(context: &Context) -> String {
    let api: Api<SelfSubjectReview> = Api::all(context.client.clone());
    let review = SelfSubjectReview::default();
    api.create(&PostParams::default(), &review)
        .await
        .ok()
        .and_then(|r| r.status?.user_info?.username)
        .map_or_else(
            || format!("kubectl mesh-remediation (context {})", context.name),
            |user| format!("{user} (kubectl mesh-remediation)"),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(annotations: serde_json::Value) -> kube::api::DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "checkout", "namespace": "shop", "annotations": annotations}
        }))
        .expect("object")
    }

    #[test]
    fn the_function_is_the_one_recorded_or_the_one_named() {
        let record = json!({"fingerprint": "f", "traceId": "t", "at": "2026-12-04T10:00:00Z",
            "streak": 1, "change": "c"})
        .to_string();
        let one = object(json!({"auto-remediation.io/error-rollback": record}));
        assert_eq!(whose(&one, None), Ok("error-rollback"));
        let two = object(json!({"auto-remediation.io/error-rollback": record,
            "auto-remediation.io/region-failover": record}));
        assert!(whose(&two, None).is_err_and(|e| e.contains("--function")));
        assert_eq!(whose(&two, Some("region-failover")), Ok("region-failover"));
        let none = object(json!({}));
        assert!(whose(&none, None).is_err_and(|e| e.contains("no action record")));
        assert!(whose(&none, Some("reboot")).is_err());
    }
}
