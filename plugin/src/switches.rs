//! The switches a person holds: pauses (cluster, namespace, object) and the hand-back of an
//! escalated object. They write exactly what the functions read (the library's names).

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use mesh_remediation::cluster::record::FIELD_MANAGER;
use mesh_remediation::guard::escalation::ESCALATED_ANNOTATION;
use mesh_remediation::guard::pause::{
    self, CONTROL_CONFIGMAP, CONTROL_NAMESPACE, PAUSE_ANNOTATION,
};
use serde_json::{Value, json};

use crate::contexts::Context;
use crate::error::{Call, OpError};
use crate::objects::{self, describe};
use crate::records::{self, PauseRow};

/// What a pause or resume applies to.
#[derive(Debug, Clone)]
pub enum Scope {
    /// Every function, every namespace.
    Cluster,
    /// One namespace.
    Namespace(String),
    /// One object.
    Object {
        /// Its kind.
        resource: ApiResource,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
}

impl Scope {
    /// How output names it.
    pub fn describe(&self) -> String {
        match self {
            Scope::Cluster => "the whole cluster".to_owned(),
            Scope::Namespace(ns) => format!("namespace {ns}"),
            Scope::Object {
                resource,
                namespace,
                name,
            } => describe(resource, namespace, name),
        }
    }
}

fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    }
}

/// Sets (`Some(reason)`) or lifts (`None`) the pause of `scope`.
pub async fn set_pause(
    context: &Context,
    scope: &Scope,
    reason: Option<&str>,
) -> Result<(), OpError> {
    if reason.is_some_and(|r| r.trim().is_empty()) {
        return Err(OpError::Usage(
            "--reason is empty; an empty pause is no pause: say why".into(),
        ));
    }
    match scope {
        Scope::Cluster => set_cluster_pause(context, reason).await,
        Scope::Namespace(namespace) => {
            let api: Api<Namespace> = Api::all(context.client.clone());
            let call = Call {
                context: &context.name,
                verb: "patch",
                object: format!("namespace {namespace}"),
            };
            api.patch(
                namespace,
                &params(),
                &Patch::Merge(annotation(PAUSE_ANNOTATION, reason)),
            )
            .await
            .map(drop)
            .map_err(|err| call.failed(err))
        }
        Scope::Object {
            resource,
            namespace,
            name,
        } => {
            patch_object(
                context,
                resource,
                namespace,
                name,
                annotation(PAUSE_ANNOTATION, reason),
            )
            .await
        }
    }
}

fn annotation(key: &str, value: Option<&str>) -> Value {
    json!({"metadata": {"annotations": {key: value}}})
}

async fn patch_object(
    context: &Context,
    resource: &ApiResource,
    namespace: &str,
    name: &str,
    body: Value,
) -> Result<(), OpError> {
    let api: Api<DynamicObject> = Api::namespaced_with(context.client.clone(), namespace, resource);
    let call = Call {
        context: &context.name,
        verb: "patch",
        object: describe(resource, namespace, name),
    };
    api.patch(name, &params(), &Patch::Merge(body))
        .await
        .map(drop)
        .map_err(|err| call.failed(err))
}

/// The cluster switch: the control ConfigMap's `paused` value, created when missing.
async fn set_cluster_pause(context: &Context, reason: Option<&str>) -> Result<(), OpError> {
    let api: Api<ConfigMap> = Api::namespaced(context.client.clone(), CONTROL_NAMESPACE);
    let object = format!("configmap {CONTROL_NAMESPACE}/{CONTROL_CONFIGMAP}");
    let call = |verb| Call {
        context: &context.name,
        verb,
        object: object.clone(),
    };
    let body = json!({"data": {"paused": reason}});
    match api
        .patch(CONTROL_CONFIGMAP, &params(), &Patch::Merge(&body))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 && reason.is_none() => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => {
            let map: ConfigMap = serde_json::from_value(json!({
                "metadata": {"name": CONTROL_CONFIGMAP, "namespace": CONTROL_NAMESPACE},
                "data": {"paused": reason},
            }))
            .map_err(|err| OpError::Usage(err.to_string()))?;
            let post = PostParams {
                field_manager: Some(FIELD_MANAGER.to_owned()),
                ..PostParams::default()
            };
            api.create(&post, &map)
                .await
                .map(drop)
                .map_err(|err| call("create").failed(err))
        }
        Err(err) => Err(call("patch").failed(err)),
    }
}

/// Every brake in force in one cluster: the switch, paused namespaces, paused objects and
/// objects that accept only some remediations.
pub async fn paused(context: &Context) -> Result<Vec<PauseRow>, OpError> {
    let mut rows = Vec::new();
    let configmaps: Api<ConfigMap> = Api::namespaced(context.client.clone(), CONTROL_NAMESPACE);
    let switch = configmaps.get_opt(CONTROL_CONFIGMAP).await.map_err(|err| {
        Call {
            context: &context.name,
            verb: "get",
            object: format!("configmap {CONTROL_NAMESPACE}/{CONTROL_CONFIGMAP}"),
        }
        .failed(err)
    })?;
    if let Some(why) = switch.and_then(|c| pause::reason(c.data?.get("paused"))) {
        rows.push(PauseRow {
            context: context.name.clone(),
            scope: "cluster".to_owned(),
            holds: format!("paused: {why}"),
        });
    }
    let namespaces = objects::list(context, &ApiResource::erase::<Namespace>(&()), None).await?;
    for ns in &namespaces {
        let scope = format!(
            "namespace {}",
            ns.metadata.name.as_deref().unwrap_or_default()
        );
        rows.extend(records::brakes_on(
            &context.name,
            &scope,
            ns.metadata.annotations.as_ref(),
        ));
    }
    let config = crate::library_config()?;
    for resource in objects::kinds(&config) {
        for object in objects::list(context, &resource, None).await? {
            let scope = describe(
                &resource,
                object.metadata.namespace.as_deref().unwrap_or_default(),
                object.metadata.name.as_deref().unwrap_or_default(),
            );
            rows.extend(records::brakes_on(
                &context.name,
                &scope,
                object.metadata.annotations.as_ref(),
            ));
        }
    }
    Ok(rows)
}

/// Hands an escalated object back: removes its escalation annotation, guarded by the
/// `resourceVersion` read, so a function's write in between is not undone blindly.
pub async fn ack(
    context: &Context,
    resource: &ApiResource,
    namespace: &str,
    name: &str,
) -> Result<(), OpError> {
    let object = objects::get(context, resource, namespace, name).await?;
    let escalated = object
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(ESCALATED_ANNOTATION));
    if !escalated {
        return Err(OpError::Nothing {
            context: context.name.clone(),
            object: describe(resource, namespace, name),
            what: format!(
                "not escalated (no annotation {ESCALATED_ANNOTATION}); nothing to hand back"
            ),
        });
    }
    let body = json!({"metadata": {
        "resourceVersion": object.metadata.resource_version,
        "annotations": {ESCALATED_ANNOTATION: null},
    }});
    patch_object(context, resource, namespace, name, body).await
}
