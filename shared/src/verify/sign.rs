//! SigV4 for the two AWS calls a verification makes without an SDK client: the query to
//! an Amazon Managed Prometheus workspace (`aps`) and `SendMessage` to the verify queue
//! (`sqs`, JSON protocol). Both are one POST each; a whole SDK client per call was not
//! worth its build time and binary size.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;

use crate::error::{Error, Result};

/// A POST to sign: where, what headers it already has, and its body.
pub struct Post<'a> {
    /// Full URL.
    pub url: &'a str,
    /// Headers sent (and signed), e.g. `content-type`.
    pub headers: &'a [(&'a str, &'a str)],
    /// The body.
    pub body: &'a [u8],
}

/// The headers to add for SigV4 (`authorization`, `x-amz-date`, and
/// `x-amz-security-token` with temporary credentials).
pub fn headers(
    post: &Post<'_>,
    credentials: &Credentials,
    service: &str,
    region: &str,
    time: SystemTime,
) -> Result<Vec<(String, String)>> {
    let identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|err| signing_error(&err))?
        .into();
    let signable = SignableRequest::new(
        "POST",
        post.url,
        post.headers.iter().copied(),
        SignableBody::Bytes(post.body),
    )
    .map_err(|err| signing_error(&err))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|err| signing_error(&err))?
        .into_parts();
    let (added, _query) = instructions.into_parts();
    Ok(added
        .into_iter()
        .map(|header| (header.name().to_owned(), header.value().to_owned()))
        .collect())
}

fn signing_error(err: &dyn std::fmt::Display) -> Error {
    Error::Aws {
        operation: "aps:QueryMetrics signing",
        message: err.to_string(),
        retryable: false,
    }
}

/// The AWS region of an Amazon Managed Prometheus workspace URL
/// (`https://aps-workspaces.<region>.amazonaws.com/workspaces/<id>`), `None` for any other.
pub fn amp_region(url: &str) -> Option<String> {
    let host = url.strip_prefix("https://")?.split('/').next()?;
    let region = host
        .strip_prefix("aps-workspaces.")?
        .strip_suffix(".amazonaws.com")?;
    (!region.is_empty() && !region.contains('.')).then(|| region.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference: botocore's `SigV4Auth(credentials, "aps", "eu-west-1")` on this very
    /// request at 2026-12-07T23:50:00Z (tests/python/test_amp_sigv4.py computes it again).
    const BOTOCORE_AUTHORIZATION: &str = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261207/eu-west-1/aps/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, Signature=36f5841431e77e022afab30557aca1da0fdb11f7786e8eac766b5f406f746f1f";
    const AMP_QUERY_URL: &str = "https://aps-workspaces.eu-west-1.amazonaws.com/workspaces/ws-0123abcd-4567-89ef-0123-456789abcdef/api/v1/query";
    const AMP_QUERY_BODY: &str =
        "query=sum%28rate%28istio_requests_total%5B5m%5D%29%29&time=1796687400.000";

    #[test]
    fn an_amp_query_is_signed_as_botocore_signs_it() {
        let credentials = Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            Some("session-token-example".into()),
            None,
            "test",
        );
        let headers_in = [("content-type", "application/x-www-form-urlencoded")];
        let post = Post {
            url: AMP_QUERY_URL,
            headers: &headers_in,
            body: AMP_QUERY_BODY.as_bytes(),
        };
        let time = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_796_687_400);
        let signed: std::collections::BTreeMap<String, String> =
            headers(&post, &credentials, "aps", "eu-west-1", time)
                .expect("signed")
                .into_iter()
                .collect();
        assert_eq!(signed["authorization"], BOTOCORE_AUTHORIZATION);
        assert_eq!(signed["x-amz-date"], "20261207T235000Z");
        assert_eq!(signed["x-amz-security-token"], "session-token-example");
    }

    #[test]
    fn workspace_urls_name_their_region() {
        assert_eq!(
            amp_region("https://aps-workspaces.eu-west-1.amazonaws.com/workspaces/ws-1"),
            Some("eu-west-1".into())
        );
        assert_eq!(amp_region("http://prometheus.monitoring:9090"), None);
        assert_eq!(
            amp_region("https://aps-workspaces.x.y.amazonaws.com/"),
            None
        );
    }
}
