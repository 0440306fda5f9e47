//! Request routing and the Kubernetes API semantics (all synchronous, under the store lock).

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde_json::{Map, Value, json};

use crate::resources::{self, RESOURCES, ResourceDef};
use crate::schema;
use crate::selector;
use crate::status::{ApiError, Cause};
use crate::store::{Entry, FieldPath, Key, Owners, State, key, now_rfc3339};

/// A request, already read.
pub(crate) struct HttpReq<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub content_type: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub body: &'a [u8],
    /// `host:port` the server listens on (for discovery answers).
    pub host: &'a str,
}

/// A response to send.
#[derive(Debug)]
pub(crate) struct HttpResp {
    pub code: u16,
    pub body: Value,
    pub warnings: Vec<String>,
    pub retry_after: Option<u32>,
    /// Plain-text body instead of JSON (health endpoints).
    pub text: Option<&'static str>,
}

impl HttpResp {
    pub(crate) fn json(code: u16, body: Value) -> Self {
        HttpResp {
            code,
            body,
            warnings: Vec::new(),
            retry_after: None,
            text: None,
        }
    }
    pub(crate) fn err(e: ApiError) -> Self {
        HttpResp {
            code: e.code,
            body: e.body,
            warnings: Vec::new(),
            retry_after: e.retry_after,
            text: None,
        }
    }
}

/// A resource URL, parsed.
#[derive(Debug, Clone)]
pub(crate) struct ResTarget {
    pub def: &'static ResourceDef,
    pub version: String,
    pub ns: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
}

pub(crate) enum Target {
    Json(Value),
    Text(&'static str),
    Res(ResTarget),
}

// ---------------------------------------------------------------- routing

pub(crate) fn parse_path(path: &str, host: &str) -> Result<Target, ApiError> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        [] => {
            return Ok(Target::Json(json!({"paths": [
                "/api", "/api/v1", "/apis", "/apis/apps", "/apis/apps/v1", "/apis/events.k8s.io",
                "/apis/events.k8s.io/v1", "/apis/networking.istio.io", "/apis/networking.istio.io/v1",
                "/apis/networking.istio.io/v1beta1", "/apis/networking.istio.io/v1alpha3",
                "/healthz", "/livez", "/readyz", "/version"]})));
        }
        ["version"] => return Ok(Target::Json(version_info())),
        ["healthz" | "livez" | "readyz"] => return Ok(Target::Text("ok")),
        ["api"] => {
            return Ok(Target::Json(json!({
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}],
            })));
        }
        ["apis"] => {
            let groups: Vec<Value> = resources::groups()
                .into_iter()
                .map(|(g, vs)| api_group(g, vs))
                .collect();
            return Ok(Target::Json(
                json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
            ));
        }
        ["apis", g] => {
            return resources::groups()
                .into_iter()
                .find(|(name, _)| name == g)
                .map(|(g, vs)| Target::Json(api_group(g, vs)))
                .ok_or_else(ApiError::unknown_path);
        }
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::unknown_path()),
    };
    if rest.is_empty() {
        return resource_list(group, version).map(Target::Json);
    }
    let (ns, plural, name, sub, extra) = if rest[0] == "namespaces"
        && rest.len() >= 3
        && !(rest.len() == 3 && (rest[2] == "status" || rest[2] == "finalize"))
    {
        (
            Some(rest[1]),
            rest[2],
            rest.get(3).copied(),
            rest.get(4).copied(),
            rest.len() > 5,
        )
    } else {
        (
            None,
            rest[0],
            rest.get(1).copied(),
            rest.get(2).copied(),
            rest.len() > 3,
        )
    };
    if extra {
        return Err(ApiError::unknown_path());
    }
    let def = resources::find(group, version, plural).ok_or_else(ApiError::unknown_path)?;
    if (def.namespaced && ns.is_none() && name.is_some()) || (!def.namespaced && ns.is_some()) {
        return Err(ApiError::unknown_path());
    }
    if let Some(s) = sub
        && !(s == "status" && def.status_subresource)
    {
        return Err(ApiError::unknown_path());
    }
    Ok(Target::Res(ResTarget {
        def,
        version: version.to_string(),
        ns: ns.map(str::to_string),
        name: name.map(str::to_string),
        sub: sub.map(str::to_string),
    }))
}

fn version_info() -> Value {
    json!({
        "major": "1", "minor": "34", "gitVersion": "v1.34.0-kube-standin",
        "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24.0", "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn api_group(g: &str, versions: &[&str]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    json!({"kind": "APIGroup", "apiVersion": "v1", "name": g, "versions": vs.clone(), "preferredVersion": vs[0]})
}

fn resource_list(group: &str, version: &str) -> Result<Value, ApiError> {
    let mut out = Vec::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.versions.contains(&version))
    {
        out.push(json!({
            "name": r.plural, "singularName": r.singular, "namespaced": r.namespaced, "kind": r.kind,
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update"],
            "shortNames": r.short_names,
        }));
        if r.status_subresource {
            out.push(json!({
                "name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced,
                "kind": r.kind, "verbs": ["get", "patch", "update"],
            }));
        }
    }
    if out.is_empty() {
        return Err(ApiError::unknown_path());
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Ok(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": out}))
}

// ---------------------------------------------------------------- query & options

pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    pub(crate) fn parse(q: &str) -> Self {
        Query(form_urlencoded::parse(q.as_bytes()).into_owned().collect())
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str())
    }
    fn all(&self, k: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(a, _)| a == k)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

#[derive(Debug, Clone)]
struct WriteOpts {
    dry_run: bool,
    validation: FieldValidation,
    manager: String,
    force: bool,
}

fn dry_run_flag(values: &[String], options_kind: &str) -> Result<bool, ApiError> {
    if values.iter().any(|v| v != "All") {
        let rendered = values
            .iter()
            .map(|v| format!("{v:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(ApiError::invalid_options(
            options_kind,
            &[Cause::new(
                "FieldValueNotSupported",
                "dryRun",
                format!("Unsupported value: []string{{{rendered}}}: supported values: \"All\""),
            )],
        ));
    }
    Ok(!values.is_empty())
}

fn write_opts(
    q: &Query,
    options_kind: &str,
    is_apply: bool,
    user_agent: Option<&str>,
) -> Result<WriteOpts, ApiError> {
    let dry_run = dry_run_flag(&q.all("dryRun"), options_kind)?;
    let validation = match q.get("fieldValidation").unwrap_or("") {
        "" | "Warn" => FieldValidation::Warn,
        "Ignore" => FieldValidation::Ignore,
        "Strict" => FieldValidation::Strict,
        other => {
            return Err(ApiError::bad_request(format!(
                "fieldValidation must be one of \"Ignore\", \"Warn\", or \"Strict\", got {other:?}"
            )));
        }
    };
    let force_param = q.get("force");
    if force_param.is_some() && !is_apply && options_kind == "PatchOptions" {
        return Err(ApiError::invalid_options(
            options_kind,
            &[Cause::new(
                "FieldValueForbidden",
                "force",
                "Forbidden: may not be specified for non-apply patch",
            )],
        ));
    }
    let manager = match q.get("fieldManager") {
        Some(m) if !m.is_empty() => m.to_string(),
        _ if is_apply => {
            return Err(ApiError::invalid_options(
                options_kind,
                &[Cause::new(
                    "FieldValueRequired",
                    "fieldManager",
                    "Required value: is required for apply patch",
                )],
            ));
        }
        // The real server derives the manager from the User-Agent's product token.
        _ => user_agent
            .and_then(|ua| ua.split('/').next())
            .filter(|s| !s.is_empty())
            .unwrap_or("unknown")
            .to_string(),
    };
    Ok(WriteOpts {
        dry_run,
        validation,
        manager,
        force: force_param == Some("true"),
    })
}

// ---------------------------------------------------------------- dispatch

pub(crate) fn dispatch(st: &mut State, req: &HttpReq<'_>) -> HttpResp {
    let q = Query::parse(req.query);
    let target = match parse_path(req.path, req.host) {
        Ok(t) => t,
        Err(e) => return HttpResp::err(e),
    };
    let t = match target {
        Target::Json(v) => {
            return if req.method == "GET" {
                HttpResp::json(200, v)
            } else {
                HttpResp::err(ApiError::method_not_allowed())
            };
        }
        Target::Text(s) => {
            let mut r = HttpResp::json(200, Value::Null);
            r.text = Some(s);
            return r;
        }
        Target::Res(t) => t,
    };
    let result = match (req.method, t.name.is_some()) {
        ("GET", false) => list(st, &t, &q).map(|v| (200, v, Vec::new())),
        ("POST", false) if t.def.namespaced == t.ns.is_some() => create(st, &t, req, &q),
        ("DELETE", false) if t.def.namespaced == t.ns.is_some() => {
            delete_collection(st, &t, req, &q)
        }
        ("GET", true) => get(st, &t).map(|v| (200, v, Vec::new())),
        ("PUT", true) => update(st, &t, req, &q),
        ("PATCH", true) => patch(st, &t, req, &q),
        ("DELETE", true) if t.sub.is_none() => delete(st, &t, req, &q),
        _ => Err(ApiError::method_not_allowed()),
    };
    match result {
        Ok((code, body, warnings)) => HttpResp {
            code,
            body,
            warnings,
            retry_after: None,
            text: None,
        },
        Err(e) => HttpResp::err(e),
    }
}

type WriteResult = Result<(u16, Value, Vec<String>), ApiError>;

/// The object as served at `version` (Istio kinds share one storage across versions).
pub(crate) fn present(def: &ResourceDef, version: &str, obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.insert("apiVersion".into(), Value::String(def.api_version(version)));
        m.insert("kind".into(), Value::String(def.kind.into()));
    }
    o
}

fn target_key(t: &ResTarget) -> Key {
    key(
        t.def,
        t.ns.as_deref(),
        t.name.as_deref().unwrap_or_default(),
    )
}

fn get(st: &State, t: &ResTarget) -> Result<Value, ApiError> {
    let name = t.name.as_deref().unwrap_or_default();
    st.objects
        .get(&target_key(t))
        .map(|e| present(t.def, &t.version, &e.obj))
        .ok_or_else(|| ApiError::not_found(t.def, name))
}

fn event_field_labels(def: &ResourceDef) -> Vec<&'static str> {
    let mut v = vec!["metadata.name", "metadata.namespace"];
    if def.is_event() {
        v.extend([
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ]);
    }
    v
}

fn selected(st: &State, t: &ResTarget, q: &Query) -> Result<Vec<(Key, Value)>, ApiError> {
    let labels = selector::parse_label_selector(q.get("labelSelector").unwrap_or(""))
        .map_err(ApiError::bad_request)?;
    let allowed = event_field_labels(t.def);
    let mut fields = selector::parse_field_selector(q.get("fieldSelector").unwrap_or(""), &allowed)
        .map_err(ApiError::bad_request)?;
    if t.def.group == "events.k8s.io" {
        // events.k8s.io/v1 serves the same field labels under its own field names.
        for (path, _, _) in &mut fields {
            if let Some(rest) = path.strip_prefix("involvedObject.") {
                *path = format!("regarding.{rest}");
            } else if path == "reportingComponent" {
                *path = "reportingController".into();
            }
        }
    }
    let qr = t.def.qualified_resource();
    Ok(st
        .objects
        .iter()
        .filter(|(k, _)| k.0 == qr && t.ns.as_ref().is_none_or(|ns| &k.1 == ns))
        .filter(|(_, e)| selector::matches(&labels, e.obj.pointer("/metadata/labels")))
        .filter(|(_, e)| selector::field_matches(&fields, &e.obj))
        .map(|(k, e)| (k.clone(), present(t.def, &t.version, &e.obj)))
        .collect())
}

fn list(st: &State, t: &ResTarget, q: &Query) -> Result<Value, ApiError> {
    if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
        return Err(ApiError::status(
            405,
            "MethodNotAllowed",
            "watch is not supported by kube-standin",
            Some(json!({})),
        ));
    }
    let all = selected(st, t, q)?;
    let start: usize = match q.get("continue") {
        Some(c) if !c.is_empty() => c
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid continue token {c:?}")))?,
        _ => 0,
    };
    let limit: usize = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let items: Vec<Value> = all
        .iter()
        .skip(start)
        .take(limit)
        .map(|(_, v)| v.clone())
        .collect();
    let mut meta = json!({"resourceVersion": st.rv.to_string()});
    let next = start.saturating_add(items.len());
    if next < all.len() {
        meta["continue"] = json!(next.to_string());
        meta["remainingItemCount"] = json!(all.len() - next);
    }
    Ok(json!({
        "kind": format!("{}List", t.def.kind),
        "apiVersion": t.def.api_version(&t.version),
        "metadata": meta,
        "items": items,
    }))
}

fn parse_json_body(body: &[u8], what: &str) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding {what}: {e}")))
}

fn create(st: &mut State, t: &ResTarget, req: &HttpReq<'_>, q: &Query) -> WriteResult {
    let opts = write_opts(q, "CreateOptions", false, req.user_agent)?;
    let obj = parse_json_body(req.body, "object")?;
    commit(st, t, obj, Mode::Create, &opts, OwnersUpdate::Diff)
}

fn update(st: &mut State, t: &ResTarget, req: &HttpReq<'_>, q: &Query) -> WriteResult {
    let opts = write_opts(q, "UpdateOptions", false, req.user_agent)?;
    let obj = parse_json_body(req.body, "object")?;
    let mode = if t.sub.is_some() {
        Mode::Status { put: true }
    } else {
        Mode::Update { put: true }
    };
    commit(st, t, obj, mode, &opts, OwnersUpdate::Diff)
}

const MERGE: &str = "application/merge-patch+json";
const JSON_PATCH: &str = "application/json-patch+json";
const STRATEGIC: &str = "application/strategic-merge-patch+json";
const APPLY: &str = "application/apply-patch+yaml";

fn patch(st: &mut State, t: &ResTarget, req: &HttpReq<'_>, q: &Query) -> WriteResult {
    let ct = req
        .content_type
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let accepted: &[&str] = if t.def.istio {
        &[JSON_PATCH, MERGE, APPLY]
    } else {
        &[JSON_PATCH, MERGE, APPLY, STRATEGIC]
    };
    if !accepted.contains(&ct.as_str()) {
        return Err(ApiError::unsupported_media_type(&ct, accepted));
    }
    let is_apply = ct == APPLY;
    let opts = write_opts(q, "PatchOptions", is_apply, req.user_agent)?;
    if is_apply {
        return apply(st, t, req.body, &opts);
    }
    let name = t.name.as_deref().unwrap_or_default();
    let existing = st
        .objects
        .get(&target_key(t))
        .ok_or_else(|| ApiError::not_found(t.def, name))?;
    let mut doc = present(t.def, &t.version, &existing.obj);
    match ct.as_str() {
        MERGE => {
            let p = parse_json_body(req.body, "patch")?;
            json_patch::merge(&mut doc, &p);
        }
        STRATEGIC => {
            let p = parse_json_body(req.body, "patch")?;
            strategic_merge(&mut doc, &p);
        }
        _ => {
            let p: json_patch::Patch = serde_json::from_slice(req.body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            json_patch::patch(&mut doc, &p).map_err(|e| {
                // apiserver: errors.NewGenericServerResponse(422, ...) for a failed JSON patch.
                let mut err = ApiError::status(
                    422,
                    "Invalid",
                    "the server rejected our request due to an error in our request",
                    Some(json!({"causes": [{"reason": "UnexpectedServerResponse", "message": e.to_string()}]})),
                );
                err.body["details"]["name"] = json!(name);
                err
            })?;
        }
    }
    let mode = if t.sub.is_some() {
        Mode::Status { put: false }
    } else {
        Mode::Update { put: false }
    };
    commit(st, t, doc, mode, &opts, OwnersUpdate::Diff)
}

fn delete_opts(q: &Query, body: &[u8]) -> Result<(bool, Value), ApiError> {
    let body: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        parse_json_body(body, "DeleteOptions")?
    };
    let mut dry = q.all("dryRun");
    if let Some(arr) = body.get("dryRun").and_then(Value::as_array) {
        dry.extend(arr.iter().filter_map(Value::as_str).map(str::to_string));
    }
    Ok((dry_run_flag(&dry, "DeleteOptions")?, body))
}

fn delete(st: &mut State, t: &ResTarget, req: &HttpReq<'_>, q: &Query) -> WriteResult {
    let (dry_run, opts) = delete_opts(q, req.body)?;
    let name = t.name.as_deref().unwrap_or_default();
    let k = target_key(t);
    let existing = st
        .objects
        .get(&k)
        .ok_or_else(|| ApiError::not_found(t.def, name))?;
    let obj = present(t.def, &t.version, &existing.obj);
    if let Some(pre) = opts.get("preconditions") {
        let cur_rv = obj
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        let cur_uid = obj
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or("");
        if let Some(rv) = pre.get("resourceVersion").and_then(Value::as_str)
            && rv != cur_rv
        {
            return Err(ApiError::conflict_msg(
                t.def,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {cur_rv}"
                ),
            ));
        }
        if let Some(uid) = pre.get("uid").and_then(Value::as_str)
            && uid != cur_uid
        {
            return Err(ApiError::conflict_msg(
                t.def,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {cur_uid}"
                ),
            ));
        }
    }
    if !dry_run {
        st.objects.remove(&k);
        if t.def.is_namespace() {
            // Simplified: the real server marks the namespace Terminating and deletes its
            // contents asynchronously; here everything goes at once.
            st.delete_namespace_contents(name);
            st.next_rv();
        } else {
            st.next_rv();
        }
    }
    if t.def.is_namespace() {
        // A namespace delete answers with the namespace, now Terminating.
        let mut ns = obj;
        ns["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
        ns["status"]["phase"] = json!("Terminating");
        return Ok((200, ns, Vec::new()));
    }
    // genericregistry.Store without ReturnDeletedObject: a Status with the deleted object's identity.
    let mut details = json!({"name": name, "group": t.def.group, "kind": t.def.plural,
                             "uid": obj.pointer("/metadata/uid").cloned().unwrap_or(json!(""))});
    if t.def.group.is_empty()
        && let Some(d) = details.as_object_mut()
    {
        d.remove("group");
    }
    Ok((
        200,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}),
        Vec::new(),
    ))
}

fn delete_collection(st: &mut State, t: &ResTarget, req: &HttpReq<'_>, q: &Query) -> WriteResult {
    let (dry_run, _) = delete_opts(q, req.body)?;
    let chosen = selected(st, t, q)?;
    if !dry_run {
        for (k, _) in &chosen {
            st.objects.remove(k);
        }
        if !chosen.is_empty() {
            st.next_rv();
        }
    }
    let items: Vec<Value> = chosen.into_iter().map(|(_, v)| v).collect();
    Ok((
        200,
        json!({"kind": format!("{}List", t.def.kind), "apiVersion": t.def.api_version(&t.version),
               "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
        Vec::new(),
    ))
}

// ---------------------------------------------------------------- server-side apply

fn apply(st: &mut State, t: &ResTarget, body: &[u8], opts: &WriteOpts) -> WriteResult {
    let name = t.name.clone().unwrap_or_default();
    let mut cfg: Value = serde_yaml::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
    if !cfg.is_object() {
        return Err(ApiError::bad_request("apply patch must be an object"));
    }
    let want_av = t.def.api_version(&t.version);
    match cfg.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => {
            return Err(ApiError::bad_request(
                "apiVersion must be set in apply patch",
            ));
        }
        Some(av) if av != want_av => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({want_av})"
            )));
        }
        _ => {}
    }
    match cfg.get("kind").and_then(Value::as_str) {
        None | Some("") => return Err(ApiError::bad_request("kind must be set in apply patch")),
        Some(k) if k != t.def.kind => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                t.def.kind
            )));
        }
        _ => {}
    }
    if let Some(n) = cfg.pointer("/metadata/name").and_then(Value::as_str)
        && n != name
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({n}) does not match the name on the URL ({name})"
        )));
    }
    let mut warnings = Vec::new();
    if t.def.istio
        && let Some(out) = schema::prune_and_validate(t.def.kind, &t.version, &mut cfg)
    {
        warnings = unknown_field_policy(&out.unknown, opts.validation)?;
    }
    let skip_status = t.sub.is_none() && t.def.status_subresource;
    let mut cfg_leaves = Vec::new();
    leaves(&cfg, &mut Vec::new(), &mut cfg_leaves, skip_status);
    let k = target_key(t);
    let Some(existing) = st.objects.get(&k) else {
        strip_nulls(&mut cfg);
        let mut owners = Owners::new();
        for p in &cfg_leaves {
            owners
                .entry(p.clone())
                .or_default()
                .insert(opts.manager.clone(), true);
        }
        if t.sub.is_some() {
            return Err(ApiError::not_found(t.def, &name));
        }
        let (code, obj, mut w) = commit(st, t, cfg, Mode::Create, opts, OwnersUpdate::Set(owners))?;
        warnings.append(&mut w);
        return Ok((code, obj, warnings));
    };
    let cur = present(t.def, &t.version, &existing.obj);
    let mut owners = existing.owners.clone();
    // Conflicts: a field this config sets to a different value that another manager owns.
    let mut conflicts: Vec<(String, bool, FieldPath)> = Vec::new();
    for p in &cfg_leaves {
        let want = get_path(&cfg, p);
        if get_path(&cur, p) == want {
            continue;
        }
        if let Some(os) = owners.get(p) {
            for (m, by_apply) in os {
                if *m != opts.manager {
                    conflicts.push((m.clone(), *by_apply, p.clone()));
                }
            }
        }
    }
    if !conflicts.is_empty() && !opts.force {
        return Err(apply_conflict(t, &name, &conflicts));
    }
    for (m, _, p) in &conflicts {
        if let Some(os) = owners.get_mut(p) {
            os.remove(m);
        }
    }
    let mut merged = cur.clone();
    // Fields this manager applied before and no longer applies are removed, unless shared.
    let previously: Vec<FieldPath> = owners
        .iter()
        .filter(|(_, os)| os.get(&opts.manager) == Some(&true))
        .map(|(p, _)| p.clone())
        .collect();
    for p in previously {
        if cfg_leaves.contains(&p) {
            continue;
        }
        let sole = owners.get(&p).is_some_and(|os| os.len() == 1);
        if let Some(os) = owners.get_mut(&p) {
            os.remove(&opts.manager);
        }
        if sole {
            remove_path(&mut merged, &p);
        }
    }
    apply_merge(&mut merged, &cfg);
    if cfg.pointer("/metadata/resourceVersion").is_none() {
        merged["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"].clone();
    }
    for p in &cfg_leaves {
        owners
            .entry(p.clone())
            .or_default()
            .insert(opts.manager.clone(), true);
    }
    owners.retain(|_, os| !os.is_empty());
    let mode = if t.sub.is_some() {
        Mode::Status { put: false }
    } else {
        Mode::Update { put: false }
    };
    let (code, obj, mut w) = commit(st, t, merged, mode, opts, OwnersUpdate::Set(owners))?;
    warnings.append(&mut w);
    Ok((code, obj, warnings))
}

fn apply_conflict(t: &ResTarget, name: &str, conflicts: &[(String, bool, FieldPath)]) -> ApiError {
    let gv = t.def.api_version(&t.version);
    let who = |m: &str, by_apply: bool| {
        if by_apply {
            format!("conflict with \"{m}\"")
        } else {
            format!("conflict with \"{m}\" using {gv}")
        }
    };
    let msg = if conflicts.len() == 1 {
        let (m, a, p) = &conflicts[0];
        format!(
            "Apply failed with 1 conflict: {}: {}",
            who(m, *a),
            render_path(p)
        )
    } else {
        let mut s = format!("Apply failed with {} conflicts: ", conflicts.len());
        let mut by: BTreeMap<(String, bool), Vec<String>> = BTreeMap::new();
        for (m, a, p) in conflicts {
            by.entry((m.clone(), *a)).or_default().push(render_path(p));
        }
        let parts: Vec<String> = by
            .iter()
            .map(|((m, a), ps)| {
                format!(
                    "{}s{}:\n- {}",
                    &who(m, *a)[..8],
                    &who(m, *a)[8..],
                    ps.join("\n- ")
                )
            })
            .collect();
        s.push_str(&parts.join("\n"));
        s
    };
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|(m, a, p)| json!({"reason": "FieldManagerConflict", "message": who(m, *a), "field": render_path(p)}))
        .collect();
    let mut e = ApiError::status(
        409,
        "Conflict",
        msg,
        Some(json!({"name": name, "group": t.def.group, "kind": t.def.plural, "causes": causes})),
    );
    if t.def.group.is_empty()
        && let Some(d) = e.body.get_mut("details").and_then(Value::as_object_mut)
    {
        d.remove("group");
    }
    e
}

fn render_path(p: &FieldPath) -> String {
    p.iter().map(|s| format!(".{s}")).collect()
}

/// Metadata fields the server owns (never part of field ownership).
const SERVER_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
    "generateName",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

/// Leaf paths of `v`: scalars, arrays (lists are atomic here) and empty objects.
fn leaves(v: &Value, prefix: &mut Vec<String>, out: &mut Vec<FieldPath>, skip_status: bool) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                if prefix.is_empty()
                    && (k == "apiVersion" || k == "kind" || (skip_status && k == "status"))
                {
                    continue;
                }
                if prefix.len() == 1 && prefix[0] == "metadata" && SERVER_META.contains(&k.as_str())
                {
                    continue;
                }
                prefix.push(k.clone());
                leaves(child, prefix, out, skip_status);
                prefix.pop();
            }
        }
        _ => {
            if !prefix.is_empty() {
                out.push(prefix.clone());
            }
        }
    }
}

fn get_path<'a>(v: &'a Value, p: &FieldPath) -> Option<&'a Value> {
    p.iter().try_fold(v, |cur, k| cur.get(k))
}

fn remove_path(v: &mut Value, p: &FieldPath) {
    let Some((last, parents)) = p.split_last() else {
        return;
    };
    let mut cur = v;
    for k in parents {
        match cur.get_mut(k) {
            Some(c) => cur = c,
            None => return,
        }
    }
    if let Some(m) = cur.as_object_mut() {
        m.remove(last);
    }
}

fn apply_merge(target: &mut Value, cfg: &Value) {
    match (target.as_object_mut(), cfg.as_object()) {
        (Some(t), Some(c)) => {
            for (k, cv) in c {
                if cv.is_null() {
                    t.remove(k);
                } else if cv.is_object() && t.get(k).is_some_and(Value::is_object) {
                    if let Some(tv) = t.get_mut(k) {
                        apply_merge(tv, cv);
                    }
                } else {
                    t.insert(k.clone(), cv.clone());
                }
            }
        }
        _ => *target = cfg.clone(),
    }
}

fn strip_nulls(v: &mut Value) {
    if let Some(m) = v.as_object_mut() {
        m.retain(|_, x| !x.is_null());
        for x in m.values_mut() {
            strip_nulls(x);
        }
    }
}

// ---------------------------------------------------------------- strategic merge patch

/// Merge keys of the Kubernetes types' list fields that matter for Deployments.
fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets" => Some("name"),
        "ports" => Some("containerPort"),
        "volumeMounts" => Some("mountPath"),
        "volumeDevices" => Some("devicePath"),
        "conditions" => Some("type"),
        "tolerations" => Some("key"),
        _ => None,
    }
}

/// Strategic merge patch, SIMPLIFIED: a JSON merge patch (RFC 7386) in which the list
/// fields with a known patch merge key (containers/env/volumes/... by `name`, ports by
/// `containerPort`, volumeMounts by `mountPath`, conditions by `type`) are merged
/// element-by-element instead of replaced, and `$patch: delete` removes a keyed element
/// or a map. Other directives (`$setElementOrder`, `$retainKeys`, `$deleteFromPrimitiveList`)
/// are ignored; every other list is replaced wholesale.
fn strategic_merge(target: &mut Value, patch: &Value) {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut v = patch.clone();
        if let Some(m) = v.as_object_mut() {
            m.remove("$patch");
        }
        *target = v;
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Some(t) = target.as_object_mut() else {
        return;
    };
    for (k, pv) in p {
        if k.starts_with('$') {
            continue;
        }
        if pv.is_null() || pv.get("$patch").and_then(Value::as_str) == Some("delete") {
            t.remove(k);
            continue;
        }
        match (pv, merge_key(k), t.get_mut(k)) {
            (Value::Array(items), Some(mk), Some(Value::Array(cur)))
                if items.iter().all(Value::is_object) =>
            {
                for item in items {
                    let kv = item.get(mk).cloned();
                    let pos = kv
                        .as_ref()
                        .and_then(|kv| cur.iter().position(|c| c.get(mk) == Some(kv)));
                    let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                    match (pos, delete) {
                        (Some(i), true) => {
                            cur.remove(i);
                        }
                        (None, true) => {}
                        (Some(i), false) => strategic_merge(&mut cur[i], item),
                        (None, false) => {
                            let mut fresh = Value::Object(Map::new());
                            strategic_merge(&mut fresh, item);
                            cur.push(fresh);
                        }
                    }
                }
            }
            (Value::Object(_), _, Some(tv)) if tv.is_object() => strategic_merge(tv, pv),
            (Value::Object(_), _, _) => {
                let mut fresh = Value::Object(Map::new());
                strategic_merge(&mut fresh, pv);
                t.insert(k.clone(), fresh);
            }
            _ => {
                t.insert(k.clone(), pv.clone());
            }
        }
    }
}

// ---------------------------------------------------------------- the write pipeline

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Create,
    /// Main resource; `put` = full replacement (PUT) rather than a patch.
    Update {
        put: bool,
    },
    /// The `/status` subresource: only `.status` changes.
    Status {
        put: bool,
    },
}

enum OwnersUpdate {
    /// Fields that changed become owned by the request's manager (non-apply writes).
    Diff,
    /// Precomputed by server-side apply.
    Set(Owners),
}

fn go_type(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "string",
        Value::Number(_) => "number",
        Value::Bool(_) => "bool",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
        Value::Null => "null",
    }
}

fn unknown_field_policy(unknown: &[String], v: FieldValidation) -> Result<Vec<String>, ApiError> {
    if unknown.is_empty() {
        return Ok(Vec::new());
    }
    match v {
        FieldValidation::Strict => Err(ApiError::bad_request(format!(
            "strict decoding error: {}",
            unknown
                .iter()
                .map(|u| format!("unknown field \"{u}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        FieldValidation::Warn => Ok(unknown
            .iter()
            .map(|u| format!("unknown field \"{u}\""))
            .collect()),
        FieldValidation::Ignore => Ok(Vec::new()),
    }
}

/// Decoding errors a typed (Go struct) decode would raise: 400 BadRequest.
fn typed_checks(def: &ResourceDef, version: &str, obj: &Value) -> Result<(), ApiError> {
    let fail = |field: &str, go_struct: &str, got: &Value, want: &str| {
        ApiError::bad_request(format!(
            "{kind} in version \"{version}\" cannot be handled as a {kind}: json: cannot unmarshal {got} into Go struct field {go_struct}.{field} of type {want}",
            kind = def.kind,
            got = go_type(got),
        ))
    };
    if let Some(meta) = obj.get("metadata") {
        for f in ["labels", "annotations"] {
            match meta.get(f) {
                None | Some(Value::Null) => {}
                Some(Value::Object(m)) => {
                    if let Some(bad) = m.values().find(|v| !v.is_string()) {
                        return Err(fail(&format!("metadata.{f}"), "ObjectMeta", bad, "string"));
                    }
                }
                Some(other) => {
                    return Err(fail(
                        &format!("metadata.{f}"),
                        "ObjectMeta",
                        other,
                        "map[string]string",
                    ));
                }
            }
        }
        if let Some(n) = meta.get("name")
            && !n.is_string()
            && !n.is_null()
        {
            return Err(fail("metadata.name", "ObjectMeta", n, "string"));
        }
    }
    if def.is_deployment()
        && let Some(r) = obj.pointer("/spec/replicas")
        && !r.is_null()
        && !(r.is_i64() && r.as_i64().is_some_and(|x| i32::try_from(x).is_ok()))
    {
        return Err(fail("spec.replicas", "DeploymentSpec", r, "int32"));
    }
    Ok(())
}

static DNS1123_SUBDOMAIN: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
        .expect("static regex")
});
static DNS1123_LABEL: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$").expect("static regex"));
static LABEL_VALUE: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$").expect("static regex")
});

fn name_causes(def: &ResourceDef, name: &str, field: &str) -> Vec<Cause> {
    let mut out = Vec::new();
    if def.is_namespace() {
        if name.len() > 63 {
            out.push(Cause::new(
                "FieldValueInvalid",
                field,
                format!("Invalid value: {name:?}: must be no more than 63 characters"),
            ));
        }
        if !DNS1123_LABEL.is_match(name) {
            out.push(Cause::new("FieldValueInvalid", field, format!("Invalid value: {name:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')")));
        }
    } else {
        if name.len() > 253 {
            out.push(Cause::new(
                "FieldValueInvalid",
                field,
                format!("Invalid value: {name:?}: must be no more than 253 characters"),
            ));
        }
        if !DNS1123_SUBDOMAIN.is_match(name) {
            out.push(Cause::new("FieldValueInvalid", field, format!("Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")));
        }
    }
    out
}

fn qualified_name_ok(k: &str) -> bool {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    prefix.is_none_or(|p| !p.is_empty() && p.len() <= 253 && DNS1123_SUBDOMAIN.is_match(p))
        && !name.is_empty()
        && name.len() <= 63
        && LABEL_VALUE.is_match(name)
}

fn meta_causes(obj: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    let key_msg = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')";
    if let Some(labels) = obj.pointer("/metadata/labels").and_then(Value::as_object) {
        for (k, v) in labels {
            if !qualified_name_ok(k) {
                out.push(Cause::new(
                    "FieldValueInvalid",
                    "metadata.labels",
                    format!("Invalid value: {k:?}: {key_msg}"),
                ));
            }
            let v = v.as_str().unwrap_or_default();
            if v.len() > 63 || !LABEL_VALUE.is_match(v) {
                out.push(Cause::new("FieldValueInvalid", "metadata.labels", format!("Invalid value: {v:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')")));
            }
        }
    }
    if let Some(ann) = obj
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
    {
        let mut total = 0;
        for (k, v) in ann {
            if !qualified_name_ok(&k.to_ascii_lowercase()) {
                out.push(Cause::new(
                    "FieldValueInvalid",
                    "metadata.annotations",
                    format!("Invalid value: {k:?}: {key_msg}"),
                ));
            }
            total += k.len() + v.as_str().map_or(0, str::len);
        }
        if total > 262_144 {
            out.push(Cause::new(
                "FieldValueTooLong",
                "metadata.annotations",
                "Too long: may not be more than 262144 bytes",
            ));
        }
    }
    out
}

fn labels_go(m: &Value) -> String {
    let inner: Vec<String> = m
        .as_object()
        .map(|o| o.iter().map(|(k, v)| format!("{k:?}:{}", v)).collect())
        .unwrap_or_default();
    format!("map[string]string{{{}}}", inner.join(", "))
}

fn deployment_causes(obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut out = Vec::new();
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    if let Some(r) = spec.get("replicas").and_then(Value::as_i64)
        && r < 0
    {
        out.push(Cause::new(
            "FieldValueInvalid",
            "spec.replicas",
            format!("Invalid value: {r}: must be greater than or equal to 0"),
        ));
    }
    let selector = spec.get("selector").filter(|s| !s.is_null());
    match selector {
        None => out.push(Cause::new(
            "FieldValueRequired",
            "spec.selector",
            "Required value",
        )),
        Some(sel) => {
            let match_labels = sel.get("matchLabels").and_then(Value::as_object);
            let has_exprs = sel
                .get("matchExpressions")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty());
            if match_labels.is_none_or(Map::is_empty) && !has_exprs {
                out.push(Cause::new(
                    "FieldValueInvalid",
                    "spec.selector",
                    "Invalid value: \"null\": empty selector is invalid for deployment",
                ));
            }
            let tl = spec
                .pointer("/template/metadata/labels")
                .cloned()
                .unwrap_or(json!({}));
            if let Some(ml) = match_labels
                && ml.iter().any(|(k, v)| tl.get(k) != Some(v))
            {
                out.push(Cause::new(
                    "FieldValueInvalid",
                    "spec.template.metadata.labels",
                    format!(
                        "Invalid value: {}: `selector` does not match template `labels`",
                        labels_go(&tl)
                    ),
                ));
            }
            if let Some(old_sel) = old.and_then(|o| o.pointer("/spec/selector"))
                && old_sel != sel
            {
                out.push(Cause::new(
                    "FieldValueInvalid",
                    "spec.selector",
                    format!("Invalid value: {}: field is immutable", sel),
                ));
            }
        }
    }
    match spec
        .pointer("/template/spec/containers")
        .and_then(Value::as_array)
    {
        None => out.push(Cause::new(
            "FieldValueRequired",
            "spec.template.spec.containers",
            "Required value",
        )),
        Some(cs) if cs.is_empty() => out.push(Cause::new(
            "FieldValueRequired",
            "spec.template.spec.containers",
            "Required value",
        )),
        Some(cs) => {
            for (i, c) in cs.iter().enumerate() {
                for f in ["name", "image"] {
                    if c.get(f).and_then(Value::as_str).is_none_or(str::is_empty) {
                        out.push(Cause::new(
                            "FieldValueRequired",
                            &format!("spec.template.spec.containers[{i}].{f}"),
                            "Required value",
                        ));
                    }
                }
            }
        }
    }
    out
}

fn event_causes(def: &ResourceDef, obj: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    let ns = obj
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("");
    let (regarding, note_field) = if def.group.is_empty() {
        ("involvedObject", "message")
    } else {
        ("regarding", "note")
    };
    if let Some(rns) = obj
        .pointer(&format!("/{regarding}/namespace"))
        .and_then(Value::as_str)
        && !rns.is_empty()
        && rns != ns
    {
        out.push(Cause::new(
            "FieldValueInvalid",
            &format!("{regarding}.namespace"),
            format!("Invalid value: {rns:?}: does not match event.namespace"),
        ));
    }
    let new_style = !def.group.is_empty() || obj.get("eventTime").is_some_and(|v| !v.is_null());
    if new_style {
        for f in [
            "eventTime",
            "reportingController",
            "reportingInstance",
            "action",
            "reason",
        ] {
            let present = match obj.get(f) {
                None | Some(Value::Null) => false,
                Some(Value::String(s)) => !s.is_empty(),
                Some(_) => true,
            };
            // core/v1 Event names the reporting controller `reportingComponent`.
            let present = present
                || (f == "reportingController"
                    && def.group.is_empty()
                    && obj
                        .get("reportingComponent")
                        .and_then(Value::as_str)
                        .is_some_and(|s| !s.is_empty()));
            if !present {
                let field = if f == "reportingController" && def.group.is_empty() {
                    "reportingComponent"
                } else {
                    f
                };
                out.push(Cause::new("FieldValueRequired", field, "Required value"));
            }
        }
        let ty = obj.get("type").and_then(Value::as_str).unwrap_or("");
        if ty != "Normal" && ty != "Warning" {
            out.push(Cause::new(
                "FieldValueNotSupported",
                "type",
                format!("Unsupported value: {ty:?}: supported values: \"Normal\", \"Warning\""),
            ));
        }
        if obj
            .get(note_field)
            .and_then(Value::as_str)
            .is_some_and(|n| n.len() > 1024)
        {
            out.push(Cause::new(
                "FieldValueTooLong",
                note_field,
                "Too long: may not be more than 1024 bytes",
            ));
        }
    }
    out
}

/// Defaults the API server applies to Deployments (the subset that matters for diffs).
fn default_deployment(obj: &mut Value) {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    spec.entry("replicas").or_insert(json!(1));
    spec.entry("revisionHistoryLimit").or_insert(json!(10));
    spec.entry("progressDeadlineSeconds").or_insert(json!(600));
    spec.entry("strategy")
        .or_insert(json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}));
    if let Some(ps) = spec
        .get_mut("template")
        .and_then(|t| t.get_mut("spec"))
        .and_then(Value::as_object_mut)
    {
        ps.entry("restartPolicy").or_insert(json!("Always"));
        ps.entry("terminationGracePeriodSeconds")
            .or_insert(json!(30));
        ps.entry("dnsPolicy").or_insert(json!("ClusterFirst"));
        ps.entry("schedulerName")
            .or_insert(json!("default-scheduler"));
        ps.entry("securityContext").or_insert(json!({}));
        if let Some(cs) = ps.get_mut("containers").and_then(Value::as_array_mut) {
            for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                let image = c
                    .get("image")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let tag_latest = image
                    .rsplit('/')
                    .next()
                    .is_none_or(|last| !last.contains(':') || last.ends_with(":latest"));
                c.entry("imagePullPolicy").or_insert(json!(
                    if tag_latest && !image.contains('@') {
                        "Always"
                    } else {
                        "IfNotPresent"
                    }
                ));
                c.entry("terminationMessagePath")
                    .or_insert(json!("/dev/termination-log"));
                c.entry("terminationMessagePolicy").or_insert(json!("File"));
            }
        }
    }
}

/// The simulated deployment controller: rollout complete for the current generation.
pub(crate) fn settle_deployment(obj: &mut Value) {
    let generation = obj
        .pointer("/metadata/generation")
        .cloned()
        .unwrap_or(json!(1));
    let replicas = obj
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let now = now_rfc3339();
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let mut status = json!({
        "observedGeneration": generation,
        "conditions": [
            {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
             "message": "Deployment has minimum availability.", "lastUpdateTime": now, "lastTransitionTime": now},
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
             "message": format!("ReplicaSet \"{name}\" has successfully progressed."), "lastUpdateTime": now, "lastTransitionTime": now},
        ],
    });
    if replicas > 0 {
        for f in [
            "replicas",
            "updatedReplicas",
            "readyReplicas",
            "availableReplicas",
        ] {
            status[f] = json!(replicas);
        }
    }
    obj["status"] = status;
}

/// What `metadata.generation` tracks: everything but metadata and status, and for a
/// Deployment its annotations too (a real API server's Deployment strategy bumps generation
/// on annotation changes, because they are copied to the ReplicaSets).
fn generation_view(obj: &Value, def: &ResourceDef) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        for k in ["metadata", "status", "apiVersion", "kind"] {
            m.remove(k);
        }
        if def.is_deployment() {
            let annotations = obj.pointer("/metadata/annotations").cloned();
            m.insert("annotations".into(), annotations.unwrap_or(json!({})));
        }
    }
    v
}

fn commit(
    st: &mut State,
    t: &ResTarget,
    mut obj: Value,
    mode: Mode,
    opts: &WriteOpts,
    owners_update: OwnersUpdate,
) -> WriteResult {
    let def = t.def;
    if !obj.is_object() {
        return Err(ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: the object must be a JSON object",
            def.kind, t.version, def.kind
        )));
    }
    let want_av = def.api_version(&t.version);
    if let Some(av) = obj.get("apiVersion").and_then(Value::as_str)
        && !av.is_empty()
        && av != want_av
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({want_av})"
        )));
    }
    if let Some(k) = obj.get("kind").and_then(Value::as_str)
        && !k.is_empty()
        && k != def.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({k}) does not match the expected kind ({})",
            def.kind
        )));
    }
    obj["apiVersion"] = json!(want_av);
    obj["kind"] = json!(def.kind);
    match obj.get("metadata") {
        None | Some(Value::Null) => obj["metadata"] = json!({}),
        Some(Value::Object(_)) => {}
        Some(_) => return Err(ApiError::bad_request("metadata must be an object")),
    }
    typed_checks(def, &t.version, &obj)?;

    // namespace
    if def.namespaced {
        let url_ns = t.ns.clone().unwrap_or_default();
        match obj.pointer("/metadata/namespace").and_then(Value::as_str) {
            Some(ns) if !ns.is_empty() && ns != url_ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => obj["metadata"]["namespace"] = json!(url_ns),
        }
    } else if let Some(m) = obj["metadata"].as_object_mut() {
        m.remove("namespace");
    }

    // name
    let body_name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let name = match mode {
        Mode::Create => {
            if body_name.is_empty() {
                let gen_name = obj
                    .pointer("/metadata/generateName")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                if gen_name.is_empty() {
                    return Err(ApiError::invalid_for(
                        def,
                        "",
                        &[Cause::new(
                            "FieldValueRequired",
                            "metadata.name",
                            "Required value: name or generateName is required",
                        )],
                    ));
                }
                let n = format!("{gen_name}{}", st.name_suffix());
                obj["metadata"]["name"] = json!(n);
                n
            } else {
                if let Some(url_name) = &t.name
                    && *url_name != body_name
                {
                    return Err(ApiError::bad_request(format!(
                        "the name of the object ({body_name}) does not match the name on the URL ({url_name})"
                    )));
                }
                body_name
            }
        }
        _ => {
            let url_name = t.name.clone().unwrap_or_default();
            if !body_name.is_empty() && body_name != url_name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({body_name}) does not match the name on the URL ({url_name})"
                )));
            }
            obj["metadata"]["name"] = json!(url_name);
            url_name
        }
    };

    // Istio: decode-time pruning (+ strict field validation) and schema validation.
    let mut warnings = Vec::new();
    let mut causes = Vec::new();
    if def.istio
        && let Some(out) = schema::prune_and_validate(def.kind, &t.version, &mut obj)
    {
        warnings = unknown_field_policy(&out.unknown, opts.validation)?;
        causes = out.causes;
    }

    let k = key(def, t.ns.as_deref(), &name);
    let existing: Option<Entry> = st.objects.get(&k).cloned();
    let client_rv = obj
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .map(str::to_string);
    match mode {
        Mode::Create => {
            if def.namespaced {
                let ns = t.ns.as_deref().unwrap_or_default();
                if !st.namespace_exists(ns) {
                    return Err(ApiError::namespace_not_found(ns));
                }
            }
            if existing.is_some() {
                return Err(ApiError::already_exists(def, &name));
            }
            if client_rv.as_deref().is_some_and(|r| !r.is_empty()) {
                return Err(ApiError::internal(
                    "resourceVersion should not be set on objects to be created",
                ));
            }
        }
        Mode::Update { put } | Mode::Status { put } => {
            let Some(e) = existing.as_ref() else {
                return Err(ApiError::not_found(def, &name));
            };
            let stored_rv = e
                .obj
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or("");
            match client_rv.as_deref() {
                Some(rv) if !rv.is_empty() => {
                    if rv != stored_rv {
                        return Err(ApiError::conflict(def, &name));
                    }
                }
                _ => {
                    if put && def.istio {
                        // CustomResources do not allow unconditional updates.
                        return Err(ApiError::invalid_for(
                            def,
                            &name,
                            &[Cause::new(
                                "FieldValueInvalid",
                                "metadata.resourceVersion",
                                "Invalid value: 0: must be specified for an update",
                            )],
                        ));
                    }
                }
            }
        }
    }

    // server-managed fields
    let old = existing.as_ref().map(|e| e.obj.clone());
    match (&mode, &old) {
        (Mode::Create, _) => {
            let uid = st.new_uid();
            let meta = obj["metadata"]
                .as_object_mut()
                .expect("metadata is an object (checked above)");
            meta.insert("uid".into(), json!(uid));
            meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
            if def.tracks_generation() {
                meta.insert("generation".into(), json!(1));
            } else {
                meta.remove("generation");
            }
            for f in [
                "resourceVersion",
                "managedFields",
                "selfLink",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
            ] {
                meta.remove(f);
            }
            if def.status_subresource
                && let Some(m) = obj.as_object_mut()
            {
                m.remove("status");
            }
            if def.is_namespace() {
                obj["status"] = json!({"phase": "Active"});
                obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
                if obj.pointer("/spec/finalizers").is_none() {
                    obj["spec"]["finalizers"] = json!(["kubernetes"]);
                }
            }
            if def.is_deployment() {
                default_deployment(&mut obj);
            }
        }
        (Mode::Status { .. }, Some(old)) => {
            let mut next = old.clone();
            next["apiVersion"] = obj["apiVersion"].clone();
            match obj.get("status") {
                Some(s) if !s.is_null() => next["status"] = s.clone(),
                _ => {
                    if let Some(m) = next.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            obj = next;
        }
        (Mode::Update { .. }, Some(old)) => {
            for f in [
                "uid",
                "creationTimestamp",
                "generation",
                "deletionTimestamp",
            ] {
                match old.pointer(&format!("/metadata/{f}")) {
                    Some(v) => obj["metadata"][f] = v.clone(),
                    None => {
                        if let Some(m) = obj["metadata"].as_object_mut() {
                            m.remove(f);
                        }
                    }
                }
            }
            if let Some(m) = obj["metadata"].as_object_mut() {
                m.remove("managedFields");
            }
            if def.status_subresource {
                match old.get("status") {
                    Some(s) => obj["status"] = s.clone(),
                    None => {
                        if let Some(m) = obj.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            if def.is_namespace() {
                obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
            }
            if def.is_deployment() {
                default_deployment(&mut obj);
            }
            let mut old_defaulted = old.clone();
            if def.is_deployment() {
                default_deployment(&mut old_defaulted);
            }
            if def.tracks_generation()
                && generation_view(&obj, def) != generation_view(&old_defaulted, def)
            {
                let g = old
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                obj["metadata"]["generation"] = json!(g + 1);
            }
        }
        _ => return Err(ApiError::not_found(def, &name)),
    }

    // validation (after preconditions, as in the API server's update path)
    if !matches!(mode, Mode::Status { .. }) {
        if matches!(mode, Mode::Create) {
            causes.extend(name_causes(def, &name, "metadata.name"));
        }
        causes.extend(meta_causes(&obj));
        if def.is_deployment() {
            causes.extend(deployment_causes(&obj, old.as_ref()));
        }
        if def.is_event() {
            causes.extend(event_causes(def, &obj));
        }
    }
    if !causes.is_empty() {
        return Err(ApiError::invalid_for(def, &name, &causes));
    }

    let code = if matches!(mode, Mode::Create) {
        201
    } else {
        200
    };
    if opts.dry_run {
        // Nothing is stored and no counter moves; an update keeps the stored resourceVersion.
        if let Some(old) = &old {
            obj["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        }
        return Ok((code, obj, warnings));
    }

    let rv = st.next_rv();
    obj["metadata"]["resourceVersion"] = json!(rv.to_string());
    let owners = match owners_update {
        OwnersUpdate::Set(o) => o,
        OwnersUpdate::Diff => {
            let mut owners = existing.map(|e| e.owners).unwrap_or_default();
            let skip_status = !matches!(mode, Mode::Status { .. }) && def.status_subresource;
            let mut new_leaves = Vec::new();
            leaves(&obj, &mut Vec::new(), &mut new_leaves, skip_status);
            let null = Value::Null;
            let old_v = old.as_ref().unwrap_or(&null);
            for p in &new_leaves {
                if get_path(old_v, p) != get_path(&obj, p) {
                    let mut m = BTreeMap::new();
                    m.insert(opts.manager.clone(), false);
                    owners.insert(p.clone(), m);
                }
            }
            owners
        }
    };
    let mut owners = owners;
    owners.retain(|p, _| get_path(&obj, p).is_some());

    let generation_changed = match &old {
        None => true,
        Some(o) => o.pointer("/metadata/generation") != obj.pointer("/metadata/generation"),
    };
    st.objects.insert(
        k.clone(),
        Entry {
            obj: obj.clone(),
            owners,
        },
    );
    if def.is_deployment()
        && st.settle
        && generation_changed
        && !matches!(mode, Mode::Status { .. })
    {
        // The simulated deployment controller finishes the rollout: a separate write
        // (new resourceVersion), like the real controller's status update.
        let rv2 = st.next_rv();
        if let Some(e) = st.objects.get_mut(&k) {
            settle_deployment(&mut e.obj);
            e.obj["metadata"]["resourceVersion"] = json!(rv2.to_string());
        }
    }
    Ok((code, obj, warnings))
}
