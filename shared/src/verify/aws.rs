//! AWS credentials and endpoints for the verification's own calls (the AMP query, signed
//! here; the verify queue, through its SDK client), loaded from the standard chain on first
//! use and kept.

use std::time::SystemTime;

use aws_credential_types::Credentials;

use crate::error::Result;

/// The standard AWS configuration (environment, Lambda role), loaded on first use.
#[derive(Default)]
pub struct AwsAccess {
    sdk: tokio::sync::OnceCell<aws_config::SdkConfig>,
}

impl AwsAccess {
    /// Fixed credentials and region, and an endpoint standing in for AWS (an emulator).
    pub fn with_static_keys(
        access_key_id: &str,
        secret_access_key: &str,
        region: &str,
        endpoint_url: Option<&str>,
    ) -> Self {
        let credentials = Credentials::new(access_key_id, secret_access_key, None, None, "static");
        let mut builder = aws_config::SdkConfig::builder()
            .region(aws_config::Region::new(region.to_owned()))
            .credentials_provider(
                aws_credential_types::provider::SharedCredentialsProvider::new(credentials),
            )
            .behavior_version(aws_config::BehaviorVersion::latest());
        if let Some(url) = endpoint_url {
            builder = builder.endpoint_url(url);
        }
        AwsAccess {
            sdk: tokio::sync::OnceCell::new_with(Some(builder.build())),
        }
    }

    /// The configuration, for the SDK clients of the verification's calls.
    pub(crate) async fn sdk(&self) -> &aws_config::SdkConfig {
        self.sdk
            .get_or_init(|| aws_config::load_defaults(aws_config::BehaviorVersion::latest()))
            .await
    }

    /// Current credentials and the configured region.
    pub async fn credentials(&self) -> Result<(Credentials, String)> {
        let needed_for = "sign requests to Amazon Managed Prometheus";
        crate::aws::credentials(self.sdk().await, needed_for).await
    }

    /// `AWS_ENDPOINT_URL`, when a local emulator stands in for AWS.
    pub async fn endpoint_url(&self) -> Option<String> {
        self.sdk().await.endpoint_url().map(str::to_owned)
    }

    /// SigV4 headers for `post` to `service` in `region` (the configured one when `None`).
    pub async fn sign(
        &self,
        post: &super::sign::Post<'_>,
        service: &str,
        region: Option<&str>,
    ) -> Result<Vec<(String, String)>> {
        let (credentials, own_region) = self.credentials().await?;
        let region = region.unwrap_or(&own_region);
        super::sign::headers(post, &credentials, service, region, SystemTime::now())
    }
}
