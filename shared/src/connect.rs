//! Connection to the Kubernetes API: EKS (DescribeCluster + bearer token) when
//! `CLUSTER_NAME` is set, else the standard kubeconfig / in-cluster resolution.
//!
//! Clients are built on first use, not at start, so a cold start stays a few
//! milliseconds, and are reused across warm invocations until the token must refresh.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use futures::future::BoxFuture;
use tokio::sync::Mutex;

use crate::eks;
use crate::error::{Error, Result};

/// Hands out a ready `kube::Client`. The seam tests replace to point at a stand-in.
pub trait KubeConnector: Send + Sync {
    /// A client valid for at least the next minute.
    fn client(&self) -> BoxFuture<'_, Result<kube::Client>>;
}

/// Where an EKS cluster's API server is and which CA signs it.
#[derive(Debug, Clone)]
pub struct ClusterEndpoint {
    /// `https://....eks.amazonaws.com`
    pub endpoint: String,
    /// PEM of the cluster CA.
    pub ca_pem: Vec<u8>,
}

/// AWS calls the EKS connection needs, behind a small trait.
pub trait ClusterDirectory: Send + Sync {
    /// `eks:DescribeCluster`.
    fn describe(&self, cluster: &str) -> BoxFuture<'_, Result<ClusterEndpoint>>;
    /// Current credentials and region for signing the token.
    fn credentials(&self) -> BoxFuture<'_, Result<(aws_credential_types::Credentials, String)>>;
}

/// Standard kubeconfig / in-cluster resolution (`KUBECONFIG`), built once.
pub struct KubeconfigConnector {
    timeout: Duration,
    client: tokio::sync::OnceCell<kube::Client>,
}

impl KubeconfigConnector {
    /// A connector with a per-request timeout.
    pub fn new(timeout: Duration) -> Self {
        KubeconfigConnector {
            timeout,
            client: tokio::sync::OnceCell::new(),
        }
    }
}

impl KubeConnector for KubeconfigConnector {
    fn client(&self) -> BoxFuture<'_, Result<kube::Client>> {
        Box::pin(async move {
            self.client
                .get_or_try_init(|| async {
                    let mut config = kube::Config::infer().await.map_err(|err| {
                        Error::Connect(format!("no kubeconfig or in-cluster config: {err}"))
                    })?;
                    tune(&mut config, self.timeout);
                    kube::Client::try_from(config)
                        .map_err(|err| Error::Connect(format!("cannot build client: {err}")))
                })
                .await
                .cloned()
        })
    }
}

/// An EKS cluster reached with a presigned-STS bearer token.
pub struct EksConnector {
    cluster: String,
    timeout: Duration,
    directory: Arc<dyn ClusterDirectory>,
    state: Mutex<EksState>,
}

#[derive(Default)]
struct EksState {
    endpoint: Option<ClusterEndpoint>,
    client: Option<(kube::Client, Instant)>,
}

impl EksConnector {
    /// A connector for `cluster`.
    pub fn new(cluster: String, timeout: Duration, directory: Arc<dyn ClusterDirectory>) -> Self {
        EksConnector {
            cluster,
            timeout,
            directory,
            state: Mutex::new(EksState::default()),
        }
    }
}

impl KubeConnector for EksConnector {
    fn client(&self) -> BoxFuture<'_, Result<kube::Client>> {
        Box::pin(async move {
            let mut state = self.state.lock().await;
            if let Some((client, built)) = &state.client
                && built.elapsed() < eks::TOKEN_REFRESH_AFTER
            {
                return Ok(client.clone());
            }
            let endpoint = match &state.endpoint {
                Some(endpoint) => endpoint.clone(),
                None => {
                    let endpoint = self.directory.describe(&self.cluster).await?;
                    state.endpoint = Some(endpoint.clone());
                    endpoint
                }
            };
            let (credentials, region) = self.directory.credentials().await?;
            let token = eks::token(&credentials, &region, &self.cluster, SystemTime::now())?;
            let client = client_for(&endpoint, token, self.timeout)?;
            state.client = Some((client.clone(), Instant::now()));
            Ok(client)
        })
    }
}

/// Builds a client for an EKS endpoint with its CA and a bearer token.
pub fn client_for(
    endpoint: &ClusterEndpoint,
    token: String,
    timeout: Duration,
) -> Result<kube::Client> {
    use rustls_pki_types::pem::PemObject as _;
    let url = endpoint.endpoint.parse().map_err(|err| {
        Error::Connect(format!("cluster endpoint {:?}: {err}", endpoint.endpoint))
    })?;
    let mut config = kube::Config::new(url);
    let certs: Vec<Vec<u8>> = rustls_pki_types::CertificateDer::pem_slice_iter(&endpoint.ca_pem)
        .map(|cert| cert.map(|c| c.to_vec()))
        .collect::<std::result::Result<_, _>>()
        .map_err(|err| Error::Connect(format!("cluster CA is not valid PEM: {err}")))?;
    if certs.is_empty() {
        return Err(Error::Connect("cluster CA holds no certificate".into()));
    }
    config.root_cert = Some(certs);
    config.auth_info.token = Some(token.into());
    tune(&mut config, timeout);
    kube::Client::try_from(config)
        .map_err(|err| Error::Connect(format!("cannot build client: {err}")))
}

/// Per-request timeouts for a function with a deadline, and no hidden retries: kube's
/// default retry layer may wait minutes on 429/503, longer than a Lambda lives. The
/// pipeline retries transient failures itself, bounded and within the deadline.
pub fn tune(config: &mut kube::Config, timeout: Duration) {
    config.default_retry = false;
    config.connect_timeout = Some(timeout.min(Duration::from_secs(5)));
    config.read_timeout = Some(timeout);
    config.write_timeout = Some(timeout);
}

/// The real AWS side: `eks:DescribeCluster` and the default credential chain.
#[derive(Default)]
pub struct AwsClusterDirectory {
    sdk: tokio::sync::OnceCell<aws_config::SdkConfig>,
}

impl AwsClusterDirectory {
    /// The standard AWS configuration (environment, Lambda role), loaded on first use.
    async fn sdk(&self) -> &aws_config::SdkConfig {
        self.sdk
            .get_or_init(|| aws_config::load_defaults(aws_config::BehaviorVersion::latest()))
            .await
    }
}

impl ClusterDirectory for AwsClusterDirectory {
    fn describe(&self, cluster: &str) -> BoxFuture<'_, Result<ClusterEndpoint>> {
        let cluster = cluster.to_owned();
        Box::pin(async move {
            let eks = aws_sdk_eks::Client::new(self.sdk().await);
            let out = eks
                .describe_cluster()
                .name(&cluster)
                .send()
                .await
                .map_err(|err| {
                    let retryable = matches!(
                        &err,
                        aws_sdk_eks::error::SdkError::TimeoutError(_)
                            | aws_sdk_eks::error::SdkError::DispatchFailure(_)
                    ) || err
                        .raw_response()
                        .is_some_and(|r| r.status().is_server_error());
                    Error::Aws {
                        operation: "eks:DescribeCluster",
                        message: aws_sdk_eks::error::DisplayErrorContext(&err).to_string(),
                        retryable,
                    }
                })?;
            let info = out
                .cluster
                .ok_or_else(|| Error::Connect(format!("cluster {cluster} not described")))?;
            let endpoint = info
                .endpoint
                .ok_or_else(|| Error::Connect(format!("cluster {cluster} has no endpoint yet")))?;
            let ca = info
                .certificate_authority
                .and_then(|c| c.data)
                .ok_or_else(|| Error::Connect(format!("cluster {cluster} has no CA data")))?;
            let ca_pem = base64::engine::general_purpose::STANDARD
                .decode(ca.trim())
                .map_err(|err| Error::Connect(format!("cluster CA is not base64: {err}")))?;
            Ok(ClusterEndpoint { endpoint, ca_pem })
        })
    }

    fn credentials(&self) -> BoxFuture<'_, Result<(aws_credential_types::Credentials, String)>> {
        use aws_credential_types::provider::ProvideCredentials as _;
        Box::pin(async move {
            let sdk = self.sdk().await;
            let region = sdk.region().map(ToString::to_string).ok_or(Error::Config {
                var: "AWS_REGION",
                message: "not set; needed to sign the EKS token".into(),
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
        })
    }
}
