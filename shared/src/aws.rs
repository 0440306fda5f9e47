//! What the requests the functions sign themselves need from the AWS configuration: current
//! credentials and the region (the EKS token and the AMP query; the SDK clients sign their own).

use aws_credential_types::Credentials;
use aws_credential_types::provider::ProvideCredentials as _;

use crate::error::{Error, Result};

/// Current credentials and the configured region of `sdk`; `needed_for` says what for, in the
/// error when the region is not set.
pub(crate) async fn credentials(
    sdk: &aws_config::SdkConfig,
    needed_for: &str,
) -> Result<(Credentials, String)> {
    let region = sdk.region().map(ToString::to_string).ok_or(Error::Config {
        var: "AWS_REGION",
        message: format!("not set; needed to {needed_for}"),
    })?;
    let provider = sdk.credentials_provider().ok_or(Error::Connect(
        "no AWS credentials provider configured".into(),
    ))?;
    let credentials = provider
        .provide_credentials()
        .await
        .map_err(|err| Error::Aws {
            operation: "credentials",
            message: err.to_string(),
            retryable: true,
        })?;
    Ok((credentials, region))
}
