//! The answers an injected status gets: a `metav1.Status` shaped as the real server's for
//! that code (reason, message, details with `retryAfterSeconds`).

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use serde_json::json;

/// The request's verb, resource and name, read from its path, for the message.
fn target(method: &str, path: &str) -> (String, String, String) {
    // /api/v1/namespaces/NS/RESOURCE[/NAME[/SUB]] or /apis/GROUP/VERSION/namespaces/...
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match parts.iter().position(|p| *p == "namespaces") {
        Some(i) if parts.len() > i + 2 => &parts[i + 2..],
        _ => {
            let skip = if parts.first() == Some(&"api") { 2 } else { 3 };
            parts.get(skip..).unwrap_or_default()
        }
    };
    let resource = rest.first().copied().unwrap_or_default().to_owned();
    let name = rest.get(1).copied().unwrap_or_default().to_owned();
    let verb = match (method, name.is_empty()) {
        ("GET", true) => "list",
        ("GET", false) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "deletecollection",
        ("DELETE", false) => "delete",
        _ => "access",
    };
    (verb.to_owned(), resource, name)
}

/// The injected answer for `code`.
pub(super) fn injected(
    code: u16,
    retry_after: Option<u32>,
    method: &str,
    path: &str,
) -> Response<Full<Bytes>> {
    let (verb, resource, name) = target(method, path);
    let retry_after = retry_after.or((code == 429).then_some(1));
    let (reason, message) = match code {
        400 => ("BadRequest", "the request is invalid".to_owned()),
        403 => (
            "Forbidden",
            format!("{resource} \"{name}\" is forbidden: cannot {verb} {resource}"),
        ),
        404 => ("NotFound", format!("{resource} \"{name}\" not found")),
        409 => (
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {resource} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
        ),
        429 => (
            "TooManyRequests",
            "Too many requests, please try again later.".to_owned(),
        ),
        503 => (
            "ServiceUnavailable",
            "the server is currently unable to handle the request".to_owned(),
        ),
        504 => (
            "Timeout",
            format!(
                "the server was unable to return a response in the time allotted, but may still be processing the request (get {resource} {name})"
            ),
        ),
        _ => (
            "InternalError",
            "an error on the server (\"\") has prevented the request from succeeding".to_owned(),
        ),
    };
    let mut details = json!({"name": name, "kind": resource});
    if let Some(seconds) = retry_after {
        details["retryAfterSeconds"] = json!(seconds);
    }
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason,
        "details": details, "code": code,
    });
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() =
        hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    if let Some(seconds) = retry_after
        && let Ok(value) = hyper::header::HeaderValue::from_str(&seconds.to_string())
    {
        response.headers_mut().insert("retry-after", value);
    }
    response
}
