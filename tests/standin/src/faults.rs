//! Fault injection rules and the request log (stand-in only; no Kubernetes counterpart).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a matching fault does to the request.
///
/// JSON form (admin endpoint `POST /_standin/faults`): externally tagged, e.g.
/// `{"latency": {"ms": 200}}`, `{"status": {"code": 429, "retry_after_secs": 1}}`,
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
/// non-latency rule that fires decides the request.
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

/// One request as the stand-in saw it (admin paths excluded).
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
    /// The bearer token it carried (the stand-in authorizes nothing).
    #[serde(default)]
    pub user: String,
}

impl RecordedRequest {
    /// Value of query parameter `name` (first occurrence, URL-decoded).
    pub fn query_param(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// Whether this was a server-side dry run (`dryRun=All`).
    pub fn is_dry_run(&self) -> bool {
        self.query_param("dryRun").as_deref() == Some("All")
    }
}
