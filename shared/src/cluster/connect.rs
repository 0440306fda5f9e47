//! Connection to the Kubernetes API: one connection per listed cluster (EKS DescribeCluster
//! and a bearer token, or a kubeconfig file named in `CLUSTER_KUBECONFIGS`), else the
//! standard kubeconfig / in-cluster resolution.
//!
//! Clients are built on first use, not at start, so a cold start stays a few
//! milliseconds, and are reused across warm invocations until the token must refresh.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use futures::future::BoxFuture;
use tokio::sync::Mutex;

use crate::cluster::eks;
use crate::error::{Error, Result};
use crate::guard::clusters::Clusters;

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
    /// `eks:DescribeCluster`, in `region` when the cluster is not in the function's own.
    fn describe(
        &self,
        cluster: &str,
        region: Option<&str>,
    ) -> BoxFuture<'_, Result<ClusterEndpoint>>;
    /// Current credentials and region for signing the token.
    fn credentials(&self) -> BoxFuture<'_, Result<(aws_credential_types::Credentials, String)>>;
}

/// Standard kubeconfig / in-cluster resolution (`KUBECONFIG`), or one kubeconfig file,
/// built once.
pub struct KubeconfigConnector {
    timeout: Duration,
    /// A kubeconfig file of its own (its current context); `None`: the standard resolution.
    file: Option<PathBuf>,
    client: tokio::sync::OnceCell<kube::Client>,
}

impl KubeconfigConnector {
    /// A connector with a per-request timeout.
    pub fn new(timeout: Duration) -> Self {
        KubeconfigConnector {
            timeout,
            file: None,
            client: tokio::sync::OnceCell::new(),
        }
    }

    /// A connector for the current context of the kubeconfig file at `path`.
    pub fn from_file(path: PathBuf, timeout: Duration) -> Self {
        KubeconfigConnector {
            file: Some(path),
            ..Self::new(timeout)
        }
    }

    async fn config(&self) -> Result<kube::Config> {
        let Some(path) = &self.file else {
            return kube::Config::infer().await.map_err(|err| {
                Error::Connect(format!("no kubeconfig or in-cluster config: {err}"))
            });
        };
        let kubeconfig = kube::config::Kubeconfig::read_from(path)
            .map_err(|err| Error::Connect(format!("kubeconfig {}: {err}", path.display())))?;
        kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .map_err(|err| Error::Connect(format!("kubeconfig {}: {err}", path.display())))
    }
}

impl KubeConnector for KubeconfigConnector {
    fn client(&self) -> BoxFuture<'_, Result<kube::Client>> {
        Box::pin(async move {
            self.client
                .get_or_try_init(|| async {
                    let mut config = self.config().await?;
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
    /// The cluster's region when not the function's own.
    region: Option<String>,
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
            region: None,
            timeout,
            directory,
            state: Mutex::new(EksState::default()),
        }
    }

    /// The same, for a cluster in `region` (described there, its token signed for it).
    pub fn in_region(mut self, region: Option<String>) -> Self {
        self.region = region;
        self
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
                    let endpoint = self
                        .directory
                        .describe(&self.cluster, self.region.as_deref())
                        .await?;
                    state.endpoint = Some(endpoint.clone());
                    endpoint
                }
            };
            let (credentials, own_region) = self.directory.credentials().await?;
            let region = self.region.as_deref().unwrap_or(&own_region);
            let token = eks::token(&credentials, region, &self.cluster, SystemTime::now())?;
            let client = client_for(&endpoint, token, self.timeout)?;
            state.client = Some((client.clone(), Instant::now()));
            Ok(client)
        })
    }
}

/// One connection per cluster the functions serve.
pub struct Connections {
    /// The connection for requests that name no cluster: the kubeconfig default, or the
    /// single connection a caller gave.
    default: Option<Arc<dyn KubeConnector>>,
    /// Connections by cluster name.
    named: BTreeMap<String, Arc<dyn KubeConnector>>,
}

impl Connections {
    /// One connection for every request, whatever cluster it names.
    pub fn single(connector: Arc<dyn KubeConnector>) -> Self {
        Connections {
            default: Some(connector),
            named: BTreeMap::new(),
        }
    }

    /// One connection per listed cluster (a kubeconfig file where `CLUSTER_KUBECONFIGS`
    /// names one, else EKS through `directory`); the kubeconfig default when none is
    /// listed. Nothing is contacted until a client is asked for.
    pub fn for_clusters(
        clusters: &Clusters,
        timeout: Duration,
        directory: Arc<dyn ClusterDirectory>,
    ) -> Self {
        if clusters.specs.is_empty() {
            return Self::single(Arc::new(KubeconfigConnector::new(timeout)));
        }
        let named = clusters
            .specs
            .iter()
            .map(|spec| {
                let connector: Arc<dyn KubeConnector> = match &spec.kubeconfig {
                    Some(path) => Arc::new(KubeconfigConnector::from_file(path.clone(), timeout)),
                    None => Arc::new(
                        EksConnector::new(spec.name.clone(), timeout, directory.clone())
                            .in_region(spec.region.clone()),
                    ),
                };
                (spec.name.clone(), connector)
            })
            .collect();
        Connections {
            default: None,
            named,
        }
    }

    /// The connection for `cluster` (`None`: the one cluster of the default).
    pub fn get(&self, cluster: Option<&str>) -> Result<&Arc<dyn KubeConnector>> {
        if let Some(name) = cluster
            && let Some(connector) = self.named.get(name)
        {
            return Ok(connector);
        }
        self.default.as_ref().ok_or_else(|| {
            Error::Connect(format!(
                "no connection for cluster {}",
                cluster.unwrap_or("(none named)")
            ))
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
    fn describe(
        &self,
        cluster: &str,
        region: Option<&str>,
    ) -> BoxFuture<'_, Result<ClusterEndpoint>> {
        let cluster = cluster.to_owned();
        let region = region.map(|r| aws_sdk_eks::config::Region::new(r.to_owned()));
        Box::pin(async move {
            let mut eks_config = aws_sdk_eks::config::Builder::from(self.sdk().await);
            if let Some(region) = region {
                eks_config = eks_config.region(region);
            }
            let eks = aws_sdk_eks::Client::from_conf(eks_config.build());
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
        Box::pin(
            async move { crate::aws::credentials(self.sdk().await, "sign the EKS token").await },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;

    /// A self-signed CA certificate (public test data, shared with tests/tests/secrets.rs)
    /// for the described endpoints.
    const TEST_CA: &str = include_str!("../../../tests/fixtures/test-ca.pem");

    /// Answers DescribeCluster for any cluster and records every call.
    #[derive(Default)]
    struct CountingDirectory {
        described: StdMutex<Vec<(String, Option<String>)>>,
    }

    impl ClusterDirectory for CountingDirectory {
        fn describe(
            &self,
            cluster: &str,
            region: Option<&str>,
        ) -> BoxFuture<'_, Result<ClusterEndpoint>> {
            self.described
                .lock()
                .expect("lock")
                .push((cluster.to_owned(), region.map(str::to_owned)));
            let endpoint = format!("https://{cluster}.eks.example.com");
            Box::pin(async move {
                Ok(ClusterEndpoint {
                    endpoint,
                    ca_pem: TEST_CA.as_bytes().to_vec(),
                })
            })
        }

        fn credentials(
            &self,
        ) -> BoxFuture<'_, Result<(aws_credential_types::Credentials, String)>> {
            Box::pin(async {
                let credentials = aws_credential_types::Credentials::new(
                    "AKIDEXAMPLE",
                    "secret",
                    None,
                    None,
                    "test",
                );
                Ok((credentials, "us-east-1".to_owned()))
            })
        }
    }

    #[tokio::test]
    async fn each_cluster_gets_one_cached_eks_client_described_in_its_region() {
        let clusters = Clusters::from_lookup(&|k: &str| {
            (k == "CLUSTER_NAMES").then(|| "prod-use1,prod-usw2@us-west-2".to_owned())
        })
        .expect("clusters");
        let directory = Arc::new(CountingDirectory::default());
        let connections =
            Connections::for_clusters(&clusters, Duration::from_secs(5), directory.clone());
        for _ in 0..3 {
            for cluster in ["prod-use1", "prod-usw2"] {
                connections
                    .get(Some(cluster))
                    .expect("a connection")
                    .client()
                    .await
                    .expect("a client");
            }
        }
        assert_eq!(
            *directory.described.lock().expect("lock"),
            [
                ("prod-use1".to_owned(), None),
                ("prod-usw2".to_owned(), Some("us-west-2".to_owned()))
            ],
            "described once per cluster, each in its own region; clients are cached"
        );
        let err = connections.get(Some("prod-euw1")).err().expect("unknown");
        assert!(err.to_string().contains("prod-euw1"), "{err}");
        assert!(
            connections.get(None).is_err(),
            "several clusters: one must be named"
        );
    }
}
