//! Sink credentials from AWS Secrets Manager, read once per execution environment.
//!
//! Nothing is read at start (the function's cold start stays free of AWS calls); the first
//! report that needs a sink reads its secret, and every later invocation of the same
//! execution environment reuses it. A failed read is not kept: the next report tries again,
//! so a fixed policy or a restored secret takes effect without a redeploy. A rotated value
//! reaches new execution environments; old ones keep theirs until Lambda retires them.

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::error::{Error, Result};
use crate::report::sinks::{CredentialKind, Secret, SinkCredential};

/// Reads the current value of a secret. The seam for AWS: tests give a store that counts.
pub trait SecretStore: Send + Sync {
    /// The secret string stored under `arn`.
    fn read<'a>(&'a self, arn: &'a str) -> BoxFuture<'a, Result<String>>;
}

/// Secrets Manager `GetSecretValue`; its client is built on first use.
#[derive(Default)]
pub struct SecretsManager {
    client: tokio::sync::OnceCell<aws_sdk_secretsmanager::Client>,
}

impl SecretStore for SecretsManager {
    fn read<'a>(&'a self, arn: &'a str) -> BoxFuture<'a, Result<String>> {
        Box::pin(async move {
            use aws_sdk_secretsmanager::error::ProvideErrorMetadata as _;
            let client = self
                .client
                .get_or_init(|| async {
                    let sdk =
                        aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
                    aws_sdk_secretsmanager::Client::new(&sdk)
                })
                .await;
            match client.get_secret_value().secret_id(arn).send().await {
                Ok(output) => output.secret_string.ok_or_else(|| Error::Secret {
                    arn: arn.to_owned(),
                    message: "holds binary data (SecretBinary); store the value as a secret string"
                        .into(),
                    retryable: false,
                }),
                Err(err) => {
                    let status = err.raw_response().map(|r| r.status().as_u16());
                    let detail = match (status, err.message()) {
                        (Some(status), Some(message)) => format!("HTTP {status}: {message}"),
                        (Some(status), None) => format!("HTTP {status}"),
                        (None, _) => {
                            aws_sdk_secretsmanager::error::DisplayErrorContext(&err).to_string()
                        }
                    };
                    Err(read_failure(arn, err.code(), status, &detail))
                }
            }
        })
    }
}

/// What a failed read means for the person who must fix it, by the service's error code
/// and the HTTP status (both `None`: the service was not reached or did not answer). A 403
/// without a code it can parse (an answer from a proxy or an emulator) is still a denial.
pub fn read_failure(arn: &str, code: Option<&str>, status: Option<u16>, detail: &str) -> Error {
    let code = code.or(match status {
        Some(403) => Some("AccessDenied"),
        _ => None,
    });
    let (message, retryable) = match code {
        Some("ResourceNotFoundException") => (
            "not found: create it in the function's account and region, or correct the ARN parameter".to_owned(),
            false,
        ),
        Some("AccessDeniedException" | "AccessDenied") => (
            "access denied: the function's role may read exactly the secrets its ARN parameters name (secretsmanager:GetSecretValue); a secret encrypted with a customer-managed KMS key also needs kms:Decrypt for the role in that key's policy".to_owned(),
            false,
        ),
        Some("DecryptionFailure") => (
            "cannot be decrypted: the KMS key's policy must let the function's role use it (kms:Decrypt)".to_owned(),
            false,
        ),
        Some("InvalidRequestException") => (
            format!("cannot be read now (deleted or scheduled for deletion?): {detail}"),
            false,
        ),
        Some("ThrottlingException" | "InternalServiceError") | None => {
            (format!("Secrets Manager unavailable: {detail}"), true)
        }
        Some(other) => (format!("{other}: {detail}"), false),
    };
    Error::Secret {
        arn: arn.to_owned(),
        message,
        retryable,
    }
}

/// One sink's credential: given, or read from the store on first use and kept.
pub struct SinkSecret {
    credential: SinkCredential,
    kind: CredentialKind,
    store: Arc<dyn SecretStore>,
    cached: tokio::sync::OnceCell<Secret>,
}

impl SinkSecret {
    /// A credential of `kind` from `credential`, read through `store` when stored.
    pub fn new(
        credential: SinkCredential,
        kind: CredentialKind,
        store: Arc<dyn SecretStore>,
    ) -> Self {
        SinkSecret {
            credential,
            kind,
            store,
            cached: tokio::sync::OnceCell::new(),
        }
    }

    /// The value: the given one, or the stored one (read at most once while it succeeds).
    pub async fn get(&self) -> Result<&Secret> {
        let (arn, var) = match &self.credential {
            SinkCredential::Value(value) => return Ok(value),
            SinkCredential::Stored { arn, var } => (arn, *var),
        };
        self.cached
            .get_or_try_init(|| async {
                let value = self.store.read(arn).await?;
                // A value pasted with its line break is still the value.
                let value = value.trim();
                if value.is_empty() {
                    return Err(Error::Secret {
                        arn: arn.clone(),
                        message: format!("is empty (named by {var})"),
                        retryable: false,
                    });
                }
                self.kind.check(value).map_err(|message| Error::Secret {
                    arn: arn.clone(),
                    message: format!("{message} (named by {var})"),
                    retryable: false,
                })?;
                tracing::info!(secret = %arn, "sink credential read from Secrets Manager");
                Ok(Secret::new(value.to_owned()))
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    const ARN: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:mesh/pd-AbCdEf";

    /// A store answering from a list, one answer per read, counting reads.
    struct Scripted(Mutex<Vec<Result<String>>>, Mutex<usize>);

    impl Scripted {
        fn new(answers: Vec<Result<String>>) -> Arc<Self> {
            Arc::new(Scripted(Mutex::new(answers), Mutex::new(0)))
        }
        fn reads(&self) -> usize {
            *self.1.lock().expect("reads")
        }
    }

    impl SecretStore for Scripted {
        fn read<'a>(&'a self, _arn: &'a str) -> BoxFuture<'a, Result<String>> {
            *self.1.lock().expect("reads") += 1;
            let answer = self.0.lock().expect("answers").remove(0);
            Box::pin(async move { answer })
        }
    }

    fn stored(store: Arc<Scripted>, kind: CredentialKind) -> SinkSecret {
        let credential = SinkCredential::Stored {
            arn: ARN.into(),
            var: "PAGERDUTY_ROUTING_KEY_SECRET_ARN",
        };
        SinkSecret::new(credential, kind, store)
    }

    #[tokio::test]
    async fn a_stored_secret_is_read_once_and_kept() {
        let store = Scripted::new(vec![Ok("pd-key\n".into())]);
        let secret = stored(store.clone(), CredentialKind::PagerDutyRoutingKey);
        for _ in 0..3 {
            assert_eq!(secret.get().await.expect("read").expose(), "pd-key");
        }
        assert_eq!(store.reads(), 1);
    }

    #[tokio::test]
    async fn a_failed_read_is_not_kept_and_the_next_report_reads_again() {
        let store = Scripted::new(vec![
            Err(read_failure(ARN, None, None, "connection refused")),
            Ok("pd-key".into()),
        ]);
        let secret = stored(store.clone(), CredentialKind::PagerDutyRoutingKey);
        let err = secret.get().await.expect_err("unreachable");
        assert!(err.is_retryable(), "{err}");
        assert_eq!(secret.get().await.expect("read").expose(), "pd-key");
        assert_eq!(store.reads(), 2);
    }

    #[tokio::test]
    async fn a_malformed_stored_value_is_described_and_never_shown() {
        for value in [
            "{\"url\": \"https://hooks.slack.com/s3cr3t\"}",
            "s3cr3t",
            "  ",
        ] {
            let store = Scripted::new(vec![Ok(value.into())]);
            let secret = stored(store, CredentialKind::SlackWebhook);
            let err = secret.get().await.expect_err(value).to_string();
            assert!(err.contains(ARN), "{err}");
            assert!(!err.contains("s3cr3t"), "{err}");
        }
    }

    #[test]
    fn read_failures_say_what_to_fix_and_whether_a_retry_helps() {
        for (code, status, says, retryable) in [
            (
                Some("ResourceNotFoundException"),
                Some(400),
                "not found",
                false,
            ),
            (
                Some("AccessDeniedException"),
                Some(400),
                "access denied",
                false,
            ),
            (None, Some(403), "access denied", false),
            (Some("DecryptionFailure"), Some(400), "kms:Decrypt", false),
            (Some("InvalidRequestException"), Some(400), "deleted", false),
            (Some("ThrottlingException"), Some(400), "unavailable", true),
            (None, Some(503), "unavailable", true),
            (None, None, "unavailable", true),
        ] {
            let err = read_failure(ARN, code, status, "detail");
            let text = err.to_string();
            assert!(text.starts_with(&format!("secret {ARN}: ")), "{text}");
            assert!(text.contains(says), "{code:?}: {text}");
            assert_eq!(err.is_retryable(), retryable, "{code:?}");
        }
    }
}
