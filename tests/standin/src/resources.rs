//! The resource types the stand-in serves.

/// A served resource (one storage, possibly several served versions).
#[derive(Debug)]
pub(crate) struct ResourceDef {
    pub group: &'static str,
    pub versions: &'static [&'static str],
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    /// Has a `/status` subresource: main-resource writes keep the stored status.
    pub status_subresource: bool,
    /// An Istio CRD: schema-validated, pruned, no strategic merge patch.
    pub istio: bool,
}

const ISTIO_VERSIONS: &[&str] = &["v1", "v1beta1", "v1alpha3"];

pub(crate) static RESOURCES: &[ResourceDef] = &[
    ResourceDef {
        group: "",
        versions: &["v1"],
        plural: "namespaces",
        singular: "namespace",
        kind: "Namespace",
        namespaced: false,
        short_names: &["ns"],
        status_subresource: true,
        istio: false,
    },
    ResourceDef {
        group: "",
        versions: &["v1"],
        plural: "configmaps",
        singular: "configmap",
        kind: "ConfigMap",
        namespaced: true,
        short_names: &["cm"],
        status_subresource: false,
        istio: false,
    },
    ResourceDef {
        group: "",
        versions: &["v1"],
        plural: "services",
        singular: "service",
        kind: "Service",
        namespaced: true,
        short_names: &["svc"],
        status_subresource: true,
        istio: false,
    },
    ResourceDef {
        group: "",
        versions: &["v1"],
        plural: "pods",
        singular: "pod",
        kind: "Pod",
        namespaced: true,
        short_names: &["po"],
        status_subresource: true,
        istio: false,
    },
    ResourceDef {
        group: "",
        versions: &["v1"],
        plural: "nodes",
        singular: "node",
        kind: "Node",
        namespaced: false,
        short_names: &["no"],
        status_subresource: true,
        istio: false,
    },
    ResourceDef {
        group: "",
        versions: &["v1"],
        plural: "events",
        singular: "event",
        kind: "Event",
        namespaced: true,
        short_names: &["ev"],
        status_subresource: false,
        istio: false,
    },
    ResourceDef {
        group: "events.k8s.io",
        versions: &["v1"],
        plural: "events",
        singular: "event",
        kind: "Event",
        namespaced: true,
        short_names: &["ev"],
        status_subresource: false,
        istio: false,
    },
    ResourceDef {
        group: "apps",
        versions: &["v1"],
        plural: "deployments",
        singular: "deployment",
        kind: "Deployment",
        namespaced: true,
        short_names: &["deploy"],
        status_subresource: true,
        istio: false,
    },
    ResourceDef {
        group: "networking.istio.io",
        versions: ISTIO_VERSIONS,
        plural: "virtualservices",
        singular: "virtualservice",
        kind: "VirtualService",
        namespaced: true,
        short_names: &["vs"],
        status_subresource: true,
        istio: true,
    },
    ResourceDef {
        group: "networking.istio.io",
        versions: ISTIO_VERSIONS,
        plural: "destinationrules",
        singular: "destinationrule",
        kind: "DestinationRule",
        namespaced: true,
        short_names: &["dr"],
        status_subresource: true,
        istio: true,
    },
    ResourceDef {
        group: "networking.istio.io",
        versions: ISTIO_VERSIONS,
        plural: "serviceentries",
        singular: "serviceentry",
        kind: "ServiceEntry",
        namespaced: true,
        short_names: &["se"],
        status_subresource: true,
        istio: true,
    },
];

impl ResourceDef {
    /// `deployments.apps`, `namespaces`: what messages and storage keys use.
    pub(crate) fn qualified_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `Deployment.apps`, `Event`.
    pub(crate) fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.to_string()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }

    pub(crate) fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{}", self.group, version)
        }
    }

    pub(crate) fn is_deployment(&self) -> bool {
        self.group == "apps" && self.plural == "deployments"
    }

    pub(crate) fn is_namespace(&self) -> bool {
        self.group.is_empty() && self.plural == "namespaces"
    }

    /// Kinds whose `metadata.generation` the server maintains (events/namespaces have none).
    pub(crate) fn tracks_generation(&self) -> bool {
        self.is_deployment() || self.istio
    }

    pub(crate) fn is_event(&self) -> bool {
        self.plural == "events"
    }
}

/// Split `apps/v1` into (`apps`, `v1`) and `v1` into (``, `v1`).
pub(crate) fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}

pub(crate) fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceDef> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.plural == plural && r.versions.contains(&version))
}

pub(crate) fn find_by_kind(
    api_version: &str,
    kind: &str,
) -> Option<(&'static ResourceDef, String)> {
    let (group, version) = split_api_version(api_version);
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.kind == kind && r.versions.contains(&version))
        .map(|r| (r, version.to_string()))
}

/// Groups (other than core) with their versions, preferred first.
pub(crate) fn groups() -> Vec<(&'static str, &'static [&'static str])> {
    let mut out: Vec<(&'static str, &'static [&'static str])> = Vec::new();
    for r in RESOURCES {
        if !r.group.is_empty() && !out.iter().any(|(g, _)| *g == r.group) {
            out.push((r.group, r.versions));
        }
    }
    out
}
