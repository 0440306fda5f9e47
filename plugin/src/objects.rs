//! The kinds the functions change, named as an operator types them, and reading them.

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use mesh_remediation::config::Config;
use mesh_remediation::remediation::istio;

use crate::contexts::Context;
use crate::error::{Call, OpError};

/// The kinds the functions change: Deployments, VirtualServices, DestinationRules.
pub fn kinds(config: &Config) -> Vec<ApiResource> {
    vec![
        ApiResource::erase::<Deployment>(&()),
        istio::virtual_service(config),
        istio::destination_rule(config),
    ]
}

/// `KIND/NAME` with kubectl's names and short names: the resource and the name.
pub fn parse_ref(config: &Config, raw: &str) -> Result<(ApiResource, String), OpError> {
    let usage = || {
        OpError::Usage(format!(
            "{raw:?} is not KIND/NAME: use deployment/NAME, virtualservice/NAME (vs) or destinationrule/NAME (dr)"
        ))
    };
    let (kind, name) = raw.split_once('/').ok_or_else(usage)?;
    if name.is_empty() || name.contains('/') {
        return Err(usage());
    }
    let kind = kind.to_ascii_lowercase();
    let kind = kind.split('.').next().unwrap_or_default();
    let resource = kinds(config).into_iter().find(|r| {
        let short = match r.kind.as_str() {
            "Deployment" => "deploy",
            "VirtualService" => "vs",
            _ => "dr",
        };
        [
            r.kind.to_ascii_lowercase().as_str(),
            r.plural.as_str(),
            short,
        ]
        .contains(&kind)
    });
    Ok((resource.ok_or_else(usage)?, name.to_owned()))
}

/// Every object of `resource` in `namespace` (all when `None`). A kind the cluster does
/// not serve (no Istio CRDs) has no objects.
pub async fn list(
    context: &Context,
    resource: &ApiResource,
    namespace: Option<&str>,
) -> Result<Vec<DynamicObject>, OpError> {
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(context.client.clone(), ns, resource),
        None => Api::all_with(context.client.clone(), resource),
    };
    let call = Call {
        context: &context.name,
        verb: "list",
        object: format!(
            "{} in {}",
            collection(resource),
            namespace.map_or("all namespaces".to_owned(), |ns| format!("namespace {ns}"))
        ),
    };
    match api.list(&ListParams::default()).await {
        Ok(list) => Ok(list.items),
        Err(kube::Error::Api(status)) if status.code == 404 && namespace.is_none() => Ok(vec![]),
        Err(err) => Err(call.failed(err)),
    }
}

/// One object.
pub async fn get(
    context: &Context,
    resource: &ApiResource,
    namespace: &str,
    name: &str,
) -> Result<DynamicObject, OpError> {
    let api: Api<DynamicObject> = Api::namespaced_with(context.client.clone(), namespace, resource);
    let call = Call {
        context: &context.name,
        verb: "get",
        object: describe(resource, namespace, name),
    };
    api.get(name).await.map_err(|err| call.failed(err))
}

/// `Deployment shop/checkout-v2`, as the functions' reports name it.
pub fn describe(resource: &ApiResource, namespace: &str, name: &str) -> String {
    mesh_remediation::remediation::describe(resource, namespace, name)
}

/// `virtualservices.networking.istio.io`, as RBAC names it.
pub fn collection(resource: &ApiResource) -> String {
    if resource.group.is_empty() {
        resource.plural.clone()
    } else {
        format!("{}.{}", resource.plural, resource.group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_named_as_kubectl_names_them() {
        let config = Config::from_lookup(|_| None).expect("defaults");
        for (raw, kind, name) in [
            ("deployment/checkout-v2", "Deployment", "checkout-v2"),
            ("deploy/checkout-v2", "Deployment", "checkout-v2"),
            ("vs/checkout", "VirtualService", "checkout"),
            ("VirtualService/checkout", "VirtualService", "checkout"),
            (
                "destinationrules.networking.istio.io/db",
                "DestinationRule",
                "db",
            ),
            ("dr/db", "DestinationRule", "db"),
        ] {
            let (resource, parsed) = parse_ref(&config, raw).expect(raw);
            assert_eq!((resource.kind.as_str(), parsed.as_str()), (kind, name));
        }
        for bad in ["checkout", "pod/x", "vs/", "vs/a/b"] {
            assert!(parse_ref(&config, bad).is_err(), "{bad}");
        }
    }
}
