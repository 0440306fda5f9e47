//! Kubernetes `Status` error bodies, shaped like the real API server's
//! (`k8s.io/apimachinery/pkg/api/errors`).

use serde_json::{Map, Value, json};

use crate::resources::ResourceDef;

/// One entry of `details.causes`.
#[derive(Debug, Clone)]
pub(crate) struct Cause {
    /// e.g. `FieldValueInvalid`.
    pub reason: String,
    /// Message without the field prefix.
    pub message: String,
    /// Field path, e.g. `spec.http[0].route[0].weight`.
    pub field: String,
}

impl Cause {
    pub(crate) fn new(reason: &str, field: &str, message: impl Into<String>) -> Self {
        Cause {
            reason: reason.to_string(),
            message: message.into(),
            field: field.to_string(),
        }
    }

    /// `field: message`, the way the API server joins them into the Status message.
    pub(crate) fn line(&self) -> String {
        if self.field.is_empty() {
            self.message.clone()
        } else {
            format!("{}: {}", self.field, self.message)
        }
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("reason".into(), Value::String(self.reason.clone()));
        m.insert("message".into(), Value::String(self.message.clone()));
        if !self.field.is_empty() {
            m.insert("field".into(), Value::String(self.field.clone()));
        }
        Value::Object(m)
    }
}

/// An error answer: HTTP code plus a `Status` body.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub code: u16,
    pub body: Value,
    pub retry_after: Option<u32>,
}

fn details(name: &str, group: &str, kind: &str) -> Value {
    let mut m = Map::new();
    if !name.is_empty() {
        m.insert("name".into(), Value::String(name.into()));
    }
    if !group.is_empty() {
        m.insert("group".into(), Value::String(group.into()));
    }
    if !kind.is_empty() {
        m.insert("kind".into(), Value::String(kind.into()));
    }
    Value::Object(m)
}

impl ApiError {
    pub(crate) fn status(
        code: u16,
        reason: &str,
        message: impl Into<String>,
        details: Option<Value>,
    ) -> Self {
        let mut body = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message.into(),
            "reason": reason,
            "code": code,
        });
        if let Some(d) = details {
            body["details"] = d;
        }
        ApiError {
            code,
            body,
            retry_after: None,
        }
    }

    pub(crate) fn not_found(def: &ResourceDef, name: &str) -> Self {
        Self::status(
            404,
            "NotFound",
            format!("{} \"{}\" not found", def.qualified_resource(), name),
            Some(details(name, def.group, def.plural)),
        )
    }

    pub(crate) fn namespace_not_found(ns: &str) -> Self {
        Self::status(
            404,
            "NotFound",
            format!("namespaces \"{ns}\" not found"),
            Some(details(ns, "", "namespaces")),
        )
    }

    pub(crate) fn unknown_path() -> Self {
        Self::status(
            404,
            "NotFound",
            "the server could not find the requested resource",
            Some(json!({})),
        )
    }

    pub(crate) fn already_exists(def: &ResourceDef, name: &str) -> Self {
        Self::status(
            409,
            "AlreadyExists",
            format!("{} \"{}\" already exists", def.qualified_resource(), name),
            Some(details(name, def.group, def.plural)),
        )
    }

    pub(crate) fn conflict(def: &ResourceDef, name: &str) -> Self {
        Self::conflict_msg(
            def,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    pub(crate) fn conflict_msg(def: &ResourceDef, name: &str, msg: &str) -> Self {
        Self::status(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{}\": {}",
                def.qualified_resource(),
                name,
                msg
            ),
            Some(details(name, def.group, def.plural)),
        )
    }

    /// 422 Invalid, message `Kind.group "name" is invalid: ...`.
    pub(crate) fn invalid(
        qualified_kind: &str,
        group: &str,
        kind: &str,
        name: &str,
        causes: &[Cause],
    ) -> Self {
        let joined = if causes.len() == 1 {
            causes[0].line()
        } else {
            format!(
                "[{}]",
                causes
                    .iter()
                    .map(Cause::line)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let mut d = details(name, group, kind);
        d["causes"] = Value::Array(causes.iter().map(Cause::to_json).collect());
        Self::status(
            422,
            "Invalid",
            format!("{qualified_kind} \"{name}\" is invalid: {joined}"),
            Some(d),
        )
    }

    pub(crate) fn invalid_for(def: &ResourceDef, name: &str, causes: &[Cause]) -> Self {
        Self::invalid(&def.qualified_kind(), def.group, def.kind, name, causes)
    }

    /// Invalid request options (`CreateOptions.meta.k8s.io "" is invalid: ...`).
    pub(crate) fn invalid_options(kind: &str, causes: &[Cause]) -> Self {
        Self::invalid(
            &format!("{kind}.meta.k8s.io"),
            "meta.k8s.io",
            kind,
            "",
            causes,
        )
    }

    pub(crate) fn bad_request(msg: impl Into<String>) -> Self {
        Self::status(400, "BadRequest", msg, None)
    }

    pub(crate) fn method_not_allowed() -> Self {
        Self::status(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
            Some(json!({})),
        )
    }

    pub(crate) fn unsupported_media_type(content_type: &str, accepted: &[&str]) -> Self {
        Self::status(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: {}",
                accepted.join(", ")
            ),
            Some(
                json!({ "causes": [{ "reason": "UnexpectedServerResponse", "message": content_type }] }),
            ),
        )
    }

    pub(crate) fn internal(msg: &str) -> Self {
        Self::status(
            500,
            "InternalError",
            format!("Internal error occurred: {msg}"),
            Some(json!({ "causes": [{ "message": msg }] })),
        )
    }

    /// A fault-injected or generic status with the real server's reason/message for `code`.
    pub(crate) fn for_code(
        code: u16,
        target: Option<(&ResourceDef, &str)>,
        verb: &str,
        ns: Option<&str>,
    ) -> Self {
        match code {
            409 => match target {
                Some((def, name)) => Self::conflict(def, name),
                None => Self::status(
                    409,
                    "Conflict",
                    "Operation cannot be fulfilled: the object has been modified; please apply your changes to the latest version and try again",
                    Some(json!({})),
                ),
            },
            403 => {
                let (res, group, name) = match target {
                    Some((def, name)) => (def.plural, def.group, name),
                    None => ("", "", ""),
                };
                let what = match target {
                    Some((def, name)) if !name.is_empty() => {
                        format!("{} \"{}\"", def.qualified_resource(), name)
                    }
                    Some((def, _)) => def.qualified_resource(),
                    None => "resource".to_string(),
                };
                let scope = match ns {
                    Some(ns) => format!(" in the namespace \"{ns}\""),
                    None => " at the cluster scope".to_string(),
                };
                Self::status(
                    403,
                    "Forbidden",
                    format!(
                        "{what} is forbidden: User \"system:anonymous\" cannot {verb} resource \"{res}\" in API group \"{group}\"{scope}"
                    ),
                    Some(details(name, group, res)),
                )
            }
            429 => Self::status(
                429,
                "TooManyRequests",
                "Too many requests, please try again later.",
                Some(json!({})),
            ),
            500 => Self::internal("injected fault (kube-standin)"),
            503 => Self::status(
                503,
                "ServiceUnavailable",
                "the server is currently unable to handle the request",
                Some(json!({})),
            ),
            504 => Self::status(
                504,
                "Timeout",
                "the server was unable to return a response in the time allotted, but may still be processing the request",
                Some(json!({})),
            ),
            400 => Self::bad_request("injected fault (kube-standin)"),
            404 => match target {
                Some((def, name)) => Self::not_found(def, name),
                None => Self::unknown_path(),
            },
            other => Self::status(
                other,
                "",
                format!(
                    "the server responded with the status code {other} but did not return more information"
                ),
                Some(json!({})),
            ),
        }
    }

    pub(crate) fn with_retry_after(mut self, secs: Option<u32>) -> Self {
        if let Some(s) = secs {
            self.retry_after = Some(s);
            if let Some(d) = self.body.get_mut("details").and_then(Value::as_object_mut) {
                d.insert("retryAfterSeconds".into(), json!(s));
            }
        }
        self
    }
}
