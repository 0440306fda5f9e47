//! Optional RBAC enforcement, off by default (like the rest of the stand-in, any token is
//! accepted until [`crate::StandIn::enforce_rbac`] turns it on).
//!
//! Authorization follows the real RBAC authorizer: ClusterRoles and Roles hold
//! [`PolicyRule`]s, ClusterRoleBindings grant them everywhere, RoleBindings grant them in
//! their own namespace; a request is allowed when any rule bound to the user or one of its
//! groups matches its verb, API group, resource (with subresource) and name. Members of
//! `system:masters` bypass authorization, as on a real cluster. A refused request gets the
//! real 403 `Status` body:
//! `deployments.apps "x" is forbidden: User "u" cannot patch resource "deployments" in API group "apps" in the namespace "shop"`.
//!
//! Identity comes from the bearer token (see [`Identity::from_bearer`]).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::status::ApiError;

/// Token prefix that names the caller's groups: `group:mesh-remediation-latency-restart`.
pub const GROUP_TOKEN_PREFIX: &str = "group:";
/// Group whose members bypass authorization (cluster admins).
pub const MASTERS_GROUP: &str = "system:masters";

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// User name, as in `User "..." cannot ...`.
    pub user: String,
    /// Groups the user belongs to.
    pub groups: Vec<String>,
}

impl Identity {
    /// The identity a bearer token stands for:
    /// - no token: `system:anonymous` in `system:unauthenticated`;
    /// - `group:G1[,G2...]`: user `G1` in groups `G1`, `G2`, ... and `system:authenticated`
    ///   (what an EKS access entry mapping a role to a Kubernetes group gives);
    /// - any other token (the stand-in's default kubeconfig): `kube-standin-admin` in
    ///   `system:masters`, i.e. a cluster admin, so test setup is never refused.
    pub fn from_bearer(token: Option<&str>) -> Identity {
        match token.map(str::trim).filter(|t| !t.is_empty()) {
            None => Identity {
                user: "system:anonymous".into(),
                groups: vec!["system:unauthenticated".into()],
            },
            Some(t) => match t.strip_prefix(GROUP_TOKEN_PREFIX) {
                Some(list) => {
                    let mut groups: Vec<String> = list
                        .split(',')
                        .map(str::trim)
                        .filter(|g| !g.is_empty())
                        .map(str::to_owned)
                        .collect();
                    let user = groups
                        .first()
                        .cloned()
                        .unwrap_or_else(|| "system:anonymous".into());
                    groups.push("system:authenticated".into());
                    Identity { user, groups }
                }
                None => Identity {
                    user: "kube-standin-admin".into(),
                    groups: vec![MASTERS_GROUP.into(), "system:authenticated".into()],
                },
            },
        }
    }

    /// The identity of an `Authorization` header value (`Bearer <token>`).
    pub fn from_authorization(header: Option<&str>) -> Identity {
        let token = header.and_then(|h| {
            let (scheme, rest) = h.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(rest)
        });
        Identity::from_bearer(token)
    }

    fn is_master(&self) -> bool {
        self.groups.iter().any(|g| g == MASTERS_GROUP)
    }

    fn authenticated(&self) -> bool {
        self.groups.iter().any(|g| g == "system:authenticated")
    }
}

/// One rule of a (Cluster)Role.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    /// API groups (`""` is core, `"*"` all).
    #[serde(default)]
    pub api_groups: Vec<String>,
    /// Resources, `resource/subresource`, `"*"` or `"*/subresource"`.
    #[serde(default)]
    pub resources: Vec<String>,
    /// Verbs (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection`, or `"*"`).
    #[serde(default)]
    pub verbs: Vec<String>,
    /// When not empty, only these object names.
    #[serde(default)]
    pub resource_names: Vec<String>,
    /// Non-resource paths (`/healthz`, `/apis/*`).
    #[serde(default, rename = "nonResourceURLs")]
    pub non_resource_urls: Vec<String>,
}

/// A ClusterRole (`namespace` None) or Role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace` of a Role; `None` for a ClusterRole.
    pub namespace: Option<String>,
    /// What it grants.
    pub rules: Vec<PolicyRule>,
}

/// One subject of a binding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    /// `User`, `Group` or `ServiceAccount`.
    pub kind: String,
    /// Name of the user, group or service account.
    pub name: String,
    /// Namespace of a service account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A ClusterRoleBinding (`namespace` None) or RoleBinding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// `metadata.name`.
    pub name: String,
    /// Namespace of a RoleBinding; `None` for a ClusterRoleBinding.
    pub namespace: Option<String>,
    /// `roleRef.kind`: `ClusterRole` or `Role`.
    pub role_kind: String,
    /// `roleRef.name`.
    pub role_name: String,
    /// Who is granted the role.
    pub subjects: Vec<Subject>,
}

/// What a request asks to do, in RBAC terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attributes {
    /// A request on an API resource.
    Resource {
        /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`.
        verb: String,
        /// API group (`""` for core).
        group: String,
        /// Plural resource name.
        resource: String,
        /// Subresource (`status`), if any.
        subresource: Option<String>,
        /// Namespace, if namespaced.
        namespace: Option<String>,
        /// Object name, if any.
        name: Option<String>,
    },
    /// A request on a non-resource path (`/version`, `/apis`).
    NonResource {
        /// Lower-case HTTP verb (`get`, `post`, ...).
        verb: String,
        /// URL path.
        path: String,
    },
}

/// ClusterRoles, Roles and their bindings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RbacPolicy {
    /// ClusterRoles and Roles.
    pub roles: Vec<Role>,
    /// ClusterRoleBindings and RoleBindings.
    pub bindings: Vec<Binding>,
}

#[derive(Deserialize)]
struct Meta {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RoleRef {
    kind: String,
    name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    metadata: Option<Meta>,
    #[serde(default)]
    rules: Option<Vec<PolicyRule>>,
    #[serde(default)]
    role_ref: Option<RoleRef>,
    #[serde(default)]
    subjects: Option<Vec<Subject>>,
}

impl RbacPolicy {
    /// Reads every ClusterRole, Role, ClusterRoleBinding and RoleBinding of a (multi-document)
    /// YAML manifest such as `deploy/rbac.yaml`; other kinds are ignored. A ClusterRole
    /// with an `aggregationRule` is not supported (its rules are taken as written).
    pub fn from_manifest(yaml: &str) -> Result<RbacPolicy, String> {
        let mut policy = RbacPolicy::default();
        for (index, document) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
            let value = serde_yaml::Value::deserialize(document)
                .map_err(|e| format!("document {index}: not YAML: {e}"))?;
            if value.is_null() {
                continue;
            }
            let m: Manifest = serde_yaml::from_value(value)
                .map_err(|e| format!("document {index}: not a Kubernetes object: {e}"))?;
            let rbac_kind = matches!(
                m.kind.as_str(),
                "ClusterRole" | "Role" | "ClusterRoleBinding" | "RoleBinding"
            );
            if !rbac_kind {
                continue;
            }
            if m.api_version != "rbac.authorization.k8s.io/v1" {
                return Err(format!(
                    "document {index}: {} has apiVersion {:?}, expected rbac.authorization.k8s.io/v1",
                    m.kind, m.api_version
                ));
            }
            let meta = m
                .metadata
                .ok_or_else(|| format!("document {index}: {} without metadata", m.kind))?;
            let namespace = match m.kind.as_str() {
                "Role" | "RoleBinding" => Some(meta.namespace.ok_or_else(|| {
                    format!(
                        "document {index}: {} {} has no metadata.namespace",
                        m.kind, meta.name
                    )
                })?),
                _ => None,
            };
            match m.kind.as_str() {
                "ClusterRole" | "Role" => policy.roles.push(Role {
                    name: meta.name,
                    namespace,
                    rules: m.rules.unwrap_or_default(),
                }),
                _ => {
                    let role_ref = m.role_ref.ok_or_else(|| {
                        format!("document {index}: {} {} has no roleRef", m.kind, meta.name)
                    })?;
                    policy.bindings.push(Binding {
                        name: meta.name,
                        namespace,
                        role_kind: role_ref.kind,
                        role_name: role_ref.name,
                        subjects: m.subjects.unwrap_or_default(),
                    });
                }
            }
        }
        Ok(policy)
    }

    /// [`RbacPolicy::from_manifest`] of a file.
    pub fn from_file(path: &std::path::Path) -> Result<RbacPolicy, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        RbacPolicy::from_manifest(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The ClusterRole `name`.
    pub fn cluster_role(&self, name: &str) -> Option<&Role> {
        self.roles
            .iter()
            .find(|r| r.namespace.is_none() && r.name == name)
    }

    /// The ClusterRole `name`, to change it.
    pub fn cluster_role_mut(&mut self, name: &str) -> Option<&mut Role> {
        self.roles
            .iter_mut()
            .find(|r| r.namespace.is_none() && r.name == name)
    }

    /// The same policy with `verb` taken away from ClusterRole `role` on `group`/`resource`
    /// (every rule granting it loses it; a rule left without verbs is dropped).
    ///
    /// # Panics
    /// If the role does not grant that verb at all: the caller's premise is wrong.
    pub fn without_verb(mut self, role: &str, group: &str, resource: &str, verb: &str) -> Self {
        let r = self
            .cluster_role_mut(role)
            .unwrap_or_else(|| panic!("no ClusterRole {role}"));
        let mut removed = false;
        for rule in &mut r.rules {
            if rule.api_groups.iter().any(|g| g == group)
                && rule.resources.iter().any(|x| x == resource)
                && rule.verbs.iter().any(|v| v == verb)
            {
                if rule.resources.len() > 1 || rule.api_groups.len() > 1 {
                    // Split the rule so only this resource loses the verb.
                    let mut rest = rule.clone();
                    rest.resources.retain(|x| x != resource);
                    rule.resources = vec![resource.to_owned()];
                    rule.api_groups = vec![group.to_owned()];
                    rule.verbs.retain(|v| v != verb);
                    removed = true;
                    r.rules.push(rest);
                    break;
                }
                rule.verbs.retain(|v| v != verb);
                removed = true;
            }
        }
        assert!(
            removed,
            "ClusterRole {role} does not grant {verb} on {group}/{resource}"
        );
        r.rules.retain(|rule| !rule.verbs.is_empty());
        self
    }

    /// The (verb, group, resource) triples ClusterRole `role` grants, for comparing with
    /// what a client used. Wildcards are kept as written.
    pub fn grants(&self, role: &str) -> BTreeSet<(String, String, String)> {
        let mut out = BTreeSet::new();
        if let Some(r) = self.cluster_role(role) {
            for rule in &r.rules {
                for verb in &rule.verbs {
                    for group in &rule.api_groups {
                        for resource in &rule.resources {
                            out.insert((verb.clone(), group.clone(), resource.clone()));
                        }
                    }
                }
            }
        }
        out
    }

    /// Whether `identity` may do `attrs`.
    pub fn allows(&self, identity: &Identity, attrs: &Attributes) -> bool {
        if identity.is_master() {
            return true;
        }
        if let Attributes::NonResource { verb, path } = attrs
            && verb == "get"
        {
            // system:public-info-viewer (everyone) and system:discovery (authenticated).
            let public = matches!(
                path.as_str(),
                "/version" | "/healthz" | "/livez" | "/readyz"
            );
            let discovery = path == "/api"
                || path == "/apis"
                || path.starts_with("/api/")
                || path.starts_with("/apis/");
            if public || (discovery && identity.authenticated()) {
                return true;
            }
        }
        self.bindings
            .iter()
            .filter(|b| b.subjects.iter().any(|s| subject_matches(s, identity)))
            .filter(|b| match (&b.namespace, attrs) {
                (None, _) => true,
                (Some(ns), Attributes::Resource { namespace, .. }) => {
                    namespace.as_deref() == Some(ns.as_str())
                }
                (Some(_), Attributes::NonResource { .. }) => false,
            })
            .filter_map(|b| self.role_of(b))
            .flat_map(|r| r.rules.iter())
            .any(|rule| rule_matches(rule, attrs))
    }

    fn role_of(&self, binding: &Binding) -> Option<&Role> {
        match binding.role_kind.as_str() {
            "ClusterRole" => self.cluster_role(&binding.role_name),
            "Role" => self.roles.iter().find(|r| {
                r.name == binding.role_name
                    && r.namespace.is_some()
                    && r.namespace == binding.namespace
            }),
            _ => None,
        }
    }

    /// The 403 answer for a refused request, as the real API server words it.
    pub(crate) fn forbidden(identity: &Identity, attrs: &Attributes) -> ApiError {
        match attrs {
            Attributes::Resource {
                verb,
                group,
                resource,
                subresource,
                namespace,
                name,
            } => {
                let qualified = if group.is_empty() {
                    resource.clone()
                } else {
                    format!("{resource}.{group}")
                };
                let what = match name {
                    Some(n) if !n.is_empty() => format!("{qualified} \"{n}\""),
                    _ => qualified,
                };
                let full = match subresource {
                    Some(s) => format!("{resource}/{s}"),
                    None => resource.clone(),
                };
                let scope = match namespace {
                    Some(ns) => format!(" in the namespace \"{ns}\""),
                    None => " at the cluster scope".into(),
                };
                let mut details = serde_json::Map::new();
                if let Some(n) = name.as_ref().filter(|n| !n.is_empty()) {
                    details.insert("name".into(), json!(n));
                }
                if !group.is_empty() {
                    details.insert("group".into(), json!(group));
                }
                details.insert("kind".into(), json!(resource));
                ApiError::status(
                    403,
                    "Forbidden",
                    format!(
                        "{what} is forbidden: User \"{}\" cannot {verb} resource \"{full}\" in API group \"{group}\"{scope}",
                        identity.user
                    ),
                    Some(Value::Object(details)),
                )
            }
            Attributes::NonResource { verb, path } => ApiError::status(
                403,
                "Forbidden",
                format!(
                    "forbidden: User \"{}\" cannot {verb} path \"{path}\"",
                    identity.user
                ),
                Some(json!({})),
            ),
        }
    }
}

/// The RBAC attributes of a request, derived from its method, path and query the way the
/// API server's request-info parser does (whether or not the resource exists).
pub fn attributes(method: &str, path: &str, query: &str) -> Attributes {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, rest): (&str, &[&str]) = match segs.as_slice() {
        ["api", _version, rest @ ..] if !rest.is_empty() => ("", rest),
        ["apis", group, _version, rest @ ..] if !rest.is_empty() => (group, rest),
        _ => {
            return Attributes::NonResource {
                verb: method.to_ascii_lowercase(),
                path: path.to_owned(),
            };
        }
    };
    let namespaced = rest[0] == "namespaces"
        && rest.len() >= 3
        && !(rest.len() == 3 && (rest[2] == "status" || rest[2] == "finalize"));
    let (namespace, resource, name, subresource) = if namespaced {
        (
            Some(rest[1]),
            rest[2],
            rest.get(3).copied(),
            rest.get(4).copied(),
        )
    } else {
        // `namespaces/{name}` names the namespace itself (its own namespace, for RoleBindings).
        let ns = (rest[0] == "namespaces")
            .then(|| rest.get(1).copied())
            .flatten();
        (ns, rest[0], rest.get(1).copied(), rest.get(2).copied())
    };
    let watch = form_urlencoded::parse(query.as_bytes())
        .any(|(k, v)| k == "watch" && (v == "true" || v == "1"));
    let verb = match (method, name.is_some()) {
        ("GET" | "HEAD", true) => "get",
        ("GET" | "HEAD", false) if watch => "watch",
        ("GET" | "HEAD", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        (other, _) => {
            return Attributes::NonResource {
                verb: other.to_ascii_lowercase(),
                path: path.to_owned(),
            };
        }
    };
    Attributes::Resource {
        verb: verb.to_owned(),
        group: group.to_owned(),
        resource: resource.to_owned(),
        subresource: subresource.map(str::to_owned),
        namespace: namespace.map(str::to_owned),
        name: name.map(str::to_owned),
    }
}

fn subject_matches(subject: &Subject, identity: &Identity) -> bool {
    match subject.kind.as_str() {
        "User" => subject.name == identity.user,
        "Group" => identity.groups.contains(&subject.name),
        "ServiceAccount" => {
            let ns = subject.namespace.as_deref().unwrap_or_default();
            identity.user == format!("system:serviceaccount:{ns}:{}", subject.name)
        }
        _ => false,
    }
}

fn rule_matches(rule: &PolicyRule, attrs: &Attributes) -> bool {
    let has = |list: &[String], want: &str| list.iter().any(|x| x == "*" || x == want);
    match attrs {
        Attributes::Resource {
            verb,
            group,
            resource,
            subresource,
            name,
            ..
        } => {
            let combined = match subresource {
                Some(s) => format!("{resource}/{s}"),
                None => resource.clone(),
            };
            let resource_ok = rule.resources.iter().any(|r| {
                r == "*"
                    || *r == combined
                    || subresource.as_ref().is_some_and(|s| *r == format!("*/{s}"))
            });
            let name_ok = rule.resource_names.is_empty()
                || name
                    .as_ref()
                    .is_some_and(|n| rule.resource_names.iter().any(|x| x == n));
            has(&rule.verbs, verb) && has(&rule.api_groups, group) && resource_ok && name_ok
        }
        Attributes::NonResource { verb, path } => {
            has(&rule.verbs, verb)
                && rule.non_resource_urls.iter().any(|u| {
                    u == "*"
                        || u == path
                        || u.strip_suffix('*').is_some_and(|p| path.starts_with(p))
                })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = include_str!("../tests/data/rbac-fixture.yaml");

    fn res(
        verb: &str,
        group: &str,
        resource: &str,
        ns: Option<&str>,
        name: Option<&str>,
    ) -> Attributes {
        Attributes::Resource {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: None,
            namespace: ns.map(Into::into),
            name: name.map(Into::into),
        }
    }

    #[test]
    fn manifest_loads_roles_and_bindings() {
        let p = RbacPolicy::from_manifest(MANIFEST).expect("loads");
        assert_eq!(p.roles.len(), 2);
        assert_eq!(p.bindings.len(), 2);
        assert_eq!(p.grants("restart").len(), 3);
    }

    #[test]
    fn group_tokens_get_exactly_their_rules() {
        let p = RbacPolicy::from_manifest(MANIFEST).expect("loads");
        let who = Identity::from_bearer(Some("group:restarters"));
        assert_eq!(who.user, "restarters");
        assert!(p.allows(
            &who,
            &res("patch", "apps", "deployments", Some("shop"), Some("x"))
        ));
        assert!(p.allows(
            &who,
            &res("create", "events.k8s.io", "events", Some("shop"), None)
        ));
        assert!(!p.allows(
            &who,
            &res("list", "apps", "deployments", Some("shop"), None)
        ));
        assert!(!p.allows(
            &who,
            &res("delete", "apps", "deployments", Some("shop"), Some("x"))
        ));
        assert!(!p.allows(&who, &res("create", "", "events", Some("shop"), None)));
        let p = p.without_verb("restart", "apps", "deployments", "patch");
        assert!(!p.allows(
            &who,
            &res("patch", "apps", "deployments", Some("shop"), Some("x"))
        ));
        assert!(p.allows(
            &who,
            &res("get", "apps", "deployments", Some("shop"), Some("x"))
        ));
    }

    #[test]
    fn role_bindings_are_namespaced_and_names_restrict() {
        let p = RbacPolicy::from_manifest(MANIFEST).expect("loads");
        let who = Identity::from_bearer(Some("group:other"));
        let watcher = Identity {
            user: "watcher".into(),
            groups: vec!["system:authenticated".into()],
        };
        let status = |ns: &str, name: &str| Attributes::Resource {
            verb: "get".into(),
            group: "apps".into(),
            resource: "deployments".into(),
            subresource: Some("status".into()),
            namespace: Some(ns.into()),
            name: Some(name.into()),
        };
        assert!(p.allows(&watcher, &status("shop", "checkout")));
        assert!(!p.allows(&watcher, &status("shop", "orders")));
        assert!(!p.allows(&watcher, &status("other", "checkout")));
        assert!(!p.allows(&who, &status("shop", "checkout")));
    }

    #[test]
    fn anonymous_admin_and_discovery() {
        let p = RbacPolicy::default();
        let anonymous = Identity::from_authorization(None);
        let admin = Identity::from_authorization(Some("Bearer kube-standin-dummy-token"));
        let member = Identity::from_authorization(Some("Bearer group:x"));
        let list_ns = res("list", "", "namespaces", None, None);
        assert!(!p.allows(&anonymous, &list_ns));
        assert!(p.allows(&admin, &list_ns));
        let apis = Attributes::NonResource {
            verb: "get".into(),
            path: "/apis".into(),
        };
        assert!(p.allows(&member, &apis));
        assert!(!p.allows(&anonymous, &apis));
    }

    #[test]
    fn forbidden_messages_read_like_the_real_server() {
        let who = Identity::from_bearer(Some("group:restarters"));
        let e = RbacPolicy::forbidden(
            &who,
            &res("patch", "apps", "deployments", Some("shop"), Some("x")),
        );
        assert_eq!(e.code, 403);
        assert_eq!(
            e.body["message"],
            "deployments.apps \"x\" is forbidden: User \"restarters\" cannot patch resource \"deployments\" in API group \"apps\" in the namespace \"shop\""
        );
        assert_eq!(e.body["reason"], "Forbidden");
        assert_eq!(
            e.body["details"],
            json!({"name": "x", "group": "apps", "kind": "deployments"})
        );
        let e = RbacPolicy::forbidden(&who, &res("list", "", "namespaces", None, None));
        assert_eq!(
            e.body["message"],
            "namespaces is forbidden: User \"restarters\" cannot list resource \"namespaces\" in API group \"\" at the cluster scope"
        );
    }

    #[test]
    fn request_attributes_follow_the_url() {
        assert_eq!(
            attributes("PATCH", "/apis/apps/v1/namespaces/shop/deployments/x", ""),
            res("patch", "apps", "deployments", Some("shop"), Some("x"))
        );
        assert_eq!(
            attributes(
                "GET",
                "/apis/networking.istio.io/v1/namespaces/shop/virtualservices",
                "labelSelector=a%3Db"
            ),
            res(
                "list",
                "networking.istio.io",
                "virtualservices",
                Some("shop"),
                None
            )
        );
        assert_eq!(
            attributes("GET", "/api/v1/namespaces", "watch=true"),
            res("watch", "", "namespaces", None, None)
        );
        assert_eq!(
            attributes("POST", "/apis/events.k8s.io/v1/namespaces/shop/events", ""),
            res("create", "events.k8s.io", "events", Some("shop"), None)
        );
        assert_eq!(
            attributes("GET", "/api/v1/namespaces/shop", ""),
            res("get", "", "namespaces", Some("shop"), Some("shop"))
        );
        match attributes(
            "PUT",
            "/apis/apps/v1/namespaces/shop/deployments/x/status",
            "",
        ) {
            Attributes::Resource {
                verb, subresource, ..
            } => {
                assert_eq!(
                    (verb.as_str(), subresource.as_deref()),
                    ("update", Some("status"))
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            attributes("GET", "/apis/apps/v1", ""),
            Attributes::NonResource {
                verb: "get".into(),
                path: "/apis/apps/v1".into()
            }
        );
    }

    #[test]
    fn bad_manifests_are_refused_clearly() {
        let err = RbacPolicy::from_manifest(
            "kind: Role\napiVersion: rbac.authorization.k8s.io/v1\nmetadata: {name: x}\n",
        )
        .expect_err("a Role needs a namespace");
        assert!(err.contains("has no metadata.namespace"), "{err}");
        let err = RbacPolicy::from_manifest("kind: ClusterRole\napiVersion: rbac.authorization.k8s.io/v1beta1\nmetadata: {name: x}\n")
            .expect_err("old API version");
        assert!(err.contains("rbac.authorization.k8s.io/v1"), "{err}");
    }
}
