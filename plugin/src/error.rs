//! The plugin's one error type: each says what was asked, where, and what to do.

use std::fmt;

/// Why a command could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The kubeconfig could not be read.
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    /// `--context` names a context the kubeconfig does not have.
    #[error("context {name:?} is not in the kubeconfig; it has: {available}")]
    MissingContext {
        /// The context asked for.
        name: String,
        /// The contexts there are.
        available: String,
    },
    /// The API server refused the user's identity this request.
    #[error(
        "[{context}] forbidden: you may not {verb} {object} ({message}); ask for `{verb}` on it in RBAC, or use a context that has it"
    )]
    Forbidden {
        /// The kubeconfig context.
        context: String,
        /// The RBAC verb: get, list, patch, create, delete.
        verb: &'static str,
        /// What it was asked on, e.g. `configmap kube-system/mesh-remediation`.
        object: String,
        /// The server's message.
        message: String,
    },
    /// The object does not exist.
    #[error("[{context}] {object} not found")]
    NotFound {
        /// The kubeconfig context.
        context: String,
        /// The object.
        object: String,
    },
    /// The object carries nothing this command works on.
    #[error("[{context}] {object}: {what}")]
    Nothing {
        /// The kubeconfig context.
        context: String,
        /// The object.
        object: String,
        /// What it lacks, and where that would be.
        what: String,
    },
    /// The arguments do not say what to do.
    #[error("{0}")]
    Usage(String),
    /// Any other API failure.
    #[error("[{context}] {verb} {object}: {source}")]
    Api {
        /// The kubeconfig context.
        context: String,
        /// The RBAC verb.
        verb: &'static str,
        /// The object.
        object: String,
        /// The client's error.
        source: Box<kube::Error>,
    },
    /// The library refused or failed (a revert's guards, a drill's publish).
    #[error("{0}")]
    Library(Box<mesh_remediation::Error>),
    /// A drill's outcome did not reach the function's log group in time.
    #[error(
        "no outcome for MessageId {message_id} in log group {log_group} within {seconds} s: {hint}"
    )]
    NoOutcome {
        /// The published message.
        message_id: String,
        /// Where it was looked for.
        log_group: String,
        /// How long.
        seconds: u64,
        /// What to check.
        hint: &'static str,
    },
    /// Reading the function's log group failed.
    #[error("logs:FilterLogEvents {log_group}: {message}")]
    Logs {
        /// The log group.
        log_group: String,
        /// What happened.
        message: String,
        /// Whether asking again may work (not for a log group that does not exist).
        retryable: bool,
    },
    /// A drill invocation failed.
    #[error("lambda:Invoke {function}: {message}")]
    Invoke {
        /// The function (name, ARN or alias ARN).
        function: String,
        /// What happened.
        message: String,
    },
}

impl OpError {
    /// Whether running the command again may succeed unchanged (API trouble, timeouts).
    pub fn retryable(&self) -> bool {
        match self {
            OpError::Api { source, .. } => match source.as_ref() {
                kube::Error::Api(status) => status.code == 429 || status.code >= 500,
                _ => true,
            },
            OpError::Library(err) => err.is_retryable(),
            OpError::Invoke { .. } | OpError::NoOutcome { .. } => true,
            OpError::Logs { retryable, .. } => *retryable,
            OpError::Kubeconfig(_)
            | OpError::MissingContext { .. }
            | OpError::Forbidden { .. }
            | OpError::NotFound { .. }
            | OpError::Nothing { .. }
            | OpError::Usage(_) => false,
        }
    }
}

impl From<mesh_remediation::Error> for OpError {
    fn from(err: mesh_remediation::Error) -> Self {
        OpError::Library(Box::new(err))
    }
}

/// One API call, for naming it in an error.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    /// The kubeconfig context.
    pub context: &'a str,
    /// The RBAC verb.
    pub verb: &'static str,
    /// The object or collection.
    pub object: String,
}

impl fmt::Display for Call<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {} {}", self.context, self.verb, self.object)
    }
}

impl Call<'_> {
    /// The error for this call's failure: 403 and 404 named as such.
    pub fn failed(&self, source: kube::Error) -> OpError {
        match &source {
            kube::Error::Api(status) if status.code == 403 => OpError::Forbidden {
                context: self.context.to_owned(),
                verb: self.verb,
                object: self.object.clone(),
                message: status.message.clone(),
            },
            kube::Error::Api(status) if status.code == 404 => OpError::NotFound {
                context: self.context.to_owned(),
                object: self.object.clone(),
            },
            _ => OpError::Api {
                context: self.context.to_owned(),
                verb: self.verb,
                object: self.object.clone(),
                source: Box::new(source),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("denied by RBAC", "Forbidden")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn a_refusal_names_the_verb_and_the_object() {
        let call = Call {
            context: "prod-use1",
            verb: "patch",
            object: "namespace shop".into(),
        };
        let err = call.failed(status(403));
        let text = err.to_string();
        assert!(
            text.contains("[prod-use1] forbidden: you may not patch namespace shop"),
            "{text}"
        );
        assert!(!err.retryable());
        assert!(call.failed(status(503)).retryable());
        assert!(matches!(call.failed(status(404)), OpError::NotFound { .. }));
    }
}
