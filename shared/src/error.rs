//! The one error type of the library, classified as retryable or not.
//!
//! Lambda retries an asynchronous invocation that returns an error (twice, then the
//! dead-letter queue). That is right for transient API trouble and wrong for bad input,
//! which no retry can fix, so every error says which it is.

/// Everything that can go wrong between an SNS record and a change in the cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration variable is missing or malformed; the function cannot start.
    #[error("configuration variable {var}: {message}")]
    Config {
        /// The environment variable at fault.
        var: &'static str,
        /// What is wrong with it.
        message: String,
    },

    /// The event or alert is malformed. Retrying cannot fix it.
    #[error("invalid input: {0}")]
    Input(String),

    /// The remediation cannot be planned for this object (e.g. no stable destination).
    #[error("cannot plan: {0}")]
    Plan(String),

    /// The Kubernetes API answered with an error or could not be reached.
    #[error("kubernetes API {operation}: {source}{hint}", hint = permission_hint(source))]
    Kube {
        /// What was being done, e.g. `patch deployments shop/checkout`.
        operation: String,
        /// The client error.
        #[source]
        source: Box<kube::Error>,
    },

    /// The object changed under us too many times in a row (HTTP 409 storm).
    #[error("gave up after {attempts} conflicting writes on {target}")]
    ConflictStorm {
        /// The object being written.
        target: String,
        /// How many writes were refused.
        attempts: u32,
    },

    /// Building a Kubernetes client failed (kubeconfig, EKS endpoint, certificate).
    #[error("kubernetes connection: {0}")]
    Connect(String),

    /// An AWS API call failed.
    #[error("AWS {operation}: {message}")]
    Aws {
        /// The AWS operation, e.g. `eks:DescribeCluster`.
        operation: &'static str,
        /// The error as reported by the SDK.
        message: String,
        /// Whether the SDK classified it as transient.
        retryable: bool,
    },

    /// A report sink (Slack, PagerDuty, Grafana, or any within its time) did not take a
    /// report. Never carries the sink's URL or credential.
    #[error("{sink}: {message}")]
    Sink {
        /// The sink, e.g. `slack`.
        sink: &'static str,
        /// What went wrong.
        message: String,
        /// Whether sending again may work (no answer, 5xx, 429).
        retryable: bool,
    },

    /// A report sink's credential could not be read from the secret store. The ARN is not a
    /// secret; the value never appears here.
    #[error("secret {arn}: {message}")]
    Secret {
        /// The secret's ARN.
        arn: String,
        /// What went wrong and what to change.
        message: String,
        /// Whether a later read may succeed (throttling, the service unreachable).
        retryable: bool,
    },

    /// A verification's query to Prometheus failed, or answered with no data: the verdict
    /// is not guessed. Retryable unless Prometheus refused the query itself (400, 422).
    #[error("Prometheus query: {message}")]
    Prometheus {
        /// What failed, with the query and the time it was for.
        message: String,
        /// Whether a later attempt may succeed.
        retryable: bool,
    },

    /// The invocation ran out of time: an API call was not started, or got no answer before
    /// the Lambda deadline. The text says which and what that means for the change.
    #[error("out of time: {0}")]
    OutOfTime(String),
}

impl Error {
    /// Whether retrying the same invocation later can succeed.
    ///
    /// Transient API failures (5xx, 429, timeouts, connection errors) and conflict storms
    /// are retryable; input, planning, configuration and permission errors are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Config { .. } | Error::Input(_) | Error::Plan(_) => false,
            Error::Kube { source, .. } => kube_error_is_retryable(source),
            Error::ConflictStorm { .. } | Error::OutOfTime(_) => true,
            Error::Connect(_) => true,
            Error::Aws { retryable, .. }
            | Error::Sink { retryable, .. }
            | Error::Secret { retryable, .. }
            | Error::Prometheus { retryable, .. } => *retryable,
        }
    }

    /// Wraps a kube client error with the operation it interrupted.
    pub fn kube(operation: impl Into<String>, source: kube::Error) -> Self {
        Error::Kube {
            operation: operation.into(),
            source: Box::new(source),
        }
    }

    /// The HTTP status the Kubernetes API answered with, if that is what failed.
    pub fn api_status(&self) -> Option<u16> {
        match self {
            Error::Kube { source, .. } => match source.as_ref() {
                kube::Error::Api(status) => Some(status.code),
                _ => None,
            },
            _ => None,
        }
    }
}

/// A 4xx answer is final (bad request, forbidden, not found, invalid) except 408 and 429;
/// 5xx and transport failures are transient.
fn kube_error_is_retryable(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => matches!(status.code, 408 | 429 | 500..=599),
        kube::Error::SerdeError(_)
        | kube::Error::BuildRequest(_)
        | kube::Error::InferConfig(_)
        | kube::Error::FromUtf8(_) => false,
        _ => true,
    }
}

/// A 401/403 is a configuration error (RBAC, access entry), not something to retry.
fn permission_hint(error: &kube::Error) -> &'static str {
    match error {
        // The API server's admission (deploy/admission-policy.yaml) refused the change itself:
        // the permission is there, the fields are not the function's to change.
        kube::Error::Api(status)
            if status.code == 403 && status.message.contains("ValidatingAdmissionPolicy") =>
        {
            " (refused by the cluster's admission policy, deploy/admission-policy.yaml: the change touches fields this function may not change; nothing was written)"
        }
        kube::Error::Api(status) if status.code == 403 => {
            " (configuration error: the function's Kubernetes group lacks this permission; apply deploy/rbac.yaml and check the EKS access entry)"
        }
        kube::Error::Api(status) if status.code == 401 => {
            " (configuration error: the cluster did not accept the function's credentials; check the EKS access entry and CLUSTER_NAME)"
        }
        _ => "",
    }
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
