//! Fault injection rules and the request log of the fault proxy in front of the real API
//! server (no Kubernetes counterpart).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a matching fault does to the request.
///
/// JSON form (serde): externally tagged, e.g.
/// `{"latency": {"ms": 200}}`, `{"answer_after": {"ms": 20}}`, `{"status": {"code": 429, "retry_after_secs": 1}}`,
/// `"conflict_bump"`, `"reset"`, `"drop_response"`, `"hang"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Delay the answer by `ms` milliseconds, then handle the request normally.
    /// Latency faults add up and do not stop later rules from matching.
    Latency {
        /// Delay in milliseconds.
        ms: u64,
    },
    /// Answer no sooner than `ms` milliseconds after the request arrived: the server's own
    /// time counts toward it, so every request costs `ms` or the server's time, whichever is
    /// longer (a remote API server with this round trip, whatever the machine is doing).
    AnswerAfter {
        /// Least time from arrival to answer, in milliseconds.
        ms: u64,
    },
    /// Answer with this HTTP status and the real server's `Status` body for it:
    /// 500 InternalError, 503 ServiceUnavailable, 504 Timeout, 429 TooManyRequests
    /// (with `Retry-After`), 409 Conflict (for the object named by the path),
    /// 403 Forbidden, 404 NotFound, 400 BadRequest.
    Status {
        /// HTTP status code.
        code: u16,
        /// `Retry-After` header and `details.retryAfterSeconds` (for 429/503).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_secs: Option<u32>,
    },
    /// Bump the stored object's resourceVersion before handling the request, as if
    /// someone else wrote it just before: a resourceVersion precondition then fails.
    ConflictBump,
    /// Close the connection without answering.
    Reset,
    /// Handle the request normally (a write is stored), then close the connection
    /// without answering: the answer is lost after the server committed the change.
    DropResponse,
    /// Never answer (the client's timeout fires).
    Hang,
}

/// A fault rule. Rules are checked in the order they were added; the first
/// rule of another kind than `latency` and `answer_after` that fires decides the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// Only requests with this HTTP method (case-insensitive), e.g. `PATCH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Only requests whose path contains this string, e.g. `deployments`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_contains: Option<String>,
    /// What happens.
    pub kind: FaultKind,
    /// Fire at most this many times (`None`: forever).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<u32>,
    /// Let the first `after` matching requests through untouched.
    #[serde(default)]
    pub after: u32,
}

impl Fault {
    /// A rule matching every request, firing forever.
    pub fn new(kind: FaultKind) -> Self {
        Fault {
            method: None,
            path_contains: None,
            kind,
            times: None,
            after: 0,
        }
    }
    /// Answer with `code` (and its real `Status` body).
    pub fn status(code: u16) -> Self {
        Self::new(FaultKind::Status {
            code,
            retry_after_secs: None,
        })
    }
    /// 429 TooManyRequests with `Retry-After: secs`.
    pub fn throttle(secs: u32) -> Self {
        Self::new(FaultKind::Status {
            code: 429,
            retry_after_secs: Some(secs),
        })
    }
    /// Delay by `ms`.
    pub fn latency(ms: u64) -> Self {
        Self::new(FaultKind::Latency { ms })
    }
    /// Restrict to one HTTP method.
    pub fn method(mut self, m: &str) -> Self {
        self.method = Some(m.to_string());
        self
    }
    /// Restrict to paths containing `p`.
    pub fn path_contains(mut self, p: &str) -> Self {
        self.path_contains = Some(p.to_string());
        self
    }
    /// Fire at most `n` times.
    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }
    /// Skip the first `n` matching requests.
    pub fn after(mut self, n: u32) -> Self {
        self.after = n;
        self
    }
}

/// One request as the proxy saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedRequest {
    /// HTTP method.
    pub method: String,
    /// URL path.
    pub path: String,
    /// Raw query string (empty if none).
    pub query: String,
    /// `Content-Type` header.
    pub content_type: Option<String>,
    /// Body: parsed JSON if it parses, else a string (YAML apply bodies), `null` if empty.
    pub body: Value,
    /// Response status; 0 when no response was sent (reset, hang). For `drop_response`,
    /// the status of the handled request whose answer was then dropped.
    pub status: u16,
    /// Who sent it: the user its bearer token belongs to.
    #[serde(default)]
    pub user: String,
    /// The API server's time for it, from forwarding to the whole answer, in microseconds
    /// (0 when it was not forwarded).
    #[serde(default)]
    pub upstream_us: u64,
}

impl RecordedRequest {
    /// Value of query parameter `name` (first occurrence, URL-decoded).
    pub fn query_param(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// What it asked for in RBAC terms, `(verb, API group, resource[/subresource])`; `None`
    /// for a path that names no resource (`/version`, `/apis`).
    pub fn grant(&self) -> Option<(String, String, String)> {
        let parts: Vec<&str> = self.path.trim_matches('/').split('/').collect();
        let (group, rest) = match parts.as_slice() {
            ["api", _version, rest @ ..] => ("", rest),
            ["apis", group, _version, rest @ ..] => (*group, rest),
            _ => return None,
        };
        let rest = match rest {
            ["namespaces", _namespace, resource, tail @ ..] => std::iter::once(*resource)
                .chain(tail.iter().copied())
                .collect::<Vec<_>>(),
            other => other.to_vec(),
        };
        let (resource, name, subresource) = match rest.as_slice() {
            [resource] => (*resource, None, None),
            [resource, name] => (*resource, Some(*name), None),
            [resource, name, sub, ..] => (*resource, Some(*name), Some(*sub)),
            _ => return None,
        };
        let watching = self
            .query_param("watch")
            .is_some_and(|w| w == "true" || w == "1");
        let verb = match (self.method.as_str(), name.is_some()) {
            ("GET", _) if watching => "watch",
            ("GET" | "HEAD", true) => "get",
            ("GET" | "HEAD", false) => "list",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            ("DELETE", true) => "delete",
            ("DELETE", false) => "deletecollection",
            _ => return None,
        };
        let resource = match subresource {
            Some(sub) => format!("{resource}/{sub}"),
            None => resource.to_owned(),
        };
        Some((verb.to_owned(), group.to_owned(), resource))
    }

    /// Whether this was a server-side dry run (`dryRun=All`).
    pub fn is_dry_run(&self) -> bool {
        self.query_param("dryRun").as_deref() == Some("All")
    }
}

/// A fault rule plus its counters.
#[derive(Debug, Clone)]
pub struct FaultSlot {
    fault: Fault,
    seen: u32,
    fired: u32,
}

impl FaultSlot {
    /// A rule not yet matched.
    pub fn new(fault: Fault) -> Self {
        FaultSlot {
            fault,
            seen: 0,
            fired: 0,
        }
    }
}

/// What the rules do to one request: the latency they add up to, the least time to answer,
/// and the first other kind that fires.
#[derive(Debug, Default)]
pub struct FaultPlan {
    /// Delay before answering.
    pub latency_ms: u64,
    /// Least time from arrival to answer (the longest `answer_after` that fires).
    pub answer_after_ms: u64,
    /// What happens then (`None`: answered normally).
    pub action: Option<FaultKind>,
}

/// Applies the rules, in the order added, to a request: counts it against each rule it
/// matches; latency adds up, the longest least time to answer holds, the first other rule
/// that fires decides.
pub fn plan_faults(slots: &mut [FaultSlot], method: &str, path: &str) -> FaultPlan {
    let mut plan = FaultPlan::default();
    for slot in slots {
        let f = &slot.fault;
        if f.method
            .as_deref()
            .is_some_and(|m| !m.eq_ignore_ascii_case(method))
            || f.path_contains
                .as_deref()
                .is_some_and(|p| !path.contains(p))
        {
            continue;
        }
        slot.seen += 1;
        if slot.seen <= f.after || f.times.is_some_and(|t| slot.fired >= t) {
            continue;
        }
        slot.fired += 1;
        match &f.kind {
            FaultKind::Latency { ms } => plan.latency_ms += ms,
            FaultKind::AnswerAfter { ms } => plan.answer_after_ms = plan.answer_after_ms.max(*ms),
            other => {
                plan.action = Some(other.clone());
                break;
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_adds_up_and_the_longest_least_time_to_answer_holds() {
        let mut slots: Vec<FaultSlot> = [
            Fault::latency(5),
            Fault::new(FaultKind::AnswerAfter { ms: 20 }),
            Fault::latency(7).method("PATCH"),
            Fault::new(FaultKind::AnswerAfter { ms: 50 }).path_contains("events"),
            Fault::new(FaultKind::AnswerAfter { ms: 10 }),
        ]
        .into_iter()
        .map(FaultSlot::new)
        .collect();
        let get = plan_faults(&mut slots, "GET", "/apis/apps/v1/deployments/a");
        assert_eq!((get.latency_ms, get.answer_after_ms), (5, 20));
        assert_eq!(get.action, None);
        let patch = plan_faults(&mut slots, "PATCH", "/api/v1/namespaces/n/events");
        assert_eq!((patch.latency_ms, patch.answer_after_ms), (12, 50));
    }

    #[test]
    fn answer_after_reads_as_the_documented_json() {
        let fault: FaultKind = serde_json::from_str(r#"{"answer_after": {"ms": 20}}"#).unwrap();
        assert_eq!(fault, FaultKind::AnswerAfter { ms: 20 });
    }
}
