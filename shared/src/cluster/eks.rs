//! EKS authentication: the bearer token `aws eks get-token` produces.
//!
//! The token is `k8s-aws-v1.` + base64url (no padding) of a presigned STS
//! `GetCallerIdentity` URL whose signature covers the header `x-k8s-aws-id: <cluster>`.
//! EKS accepts it for 15 minutes; the connection layer refreshes it before 14.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use base64::Engine as _;

use crate::error::{Error, Result};

/// Prefix of every EKS bearer token.
pub const TOKEN_PREFIX: &str = "k8s-aws-v1.";
/// How long the presigned URL is valid, as in `aws eks get-token`.
const PRESIGN_EXPIRY: Duration = Duration::from_secs(60);
/// EKS honours a token for 15 minutes after signing; refresh with a minute to spare.
pub const TOKEN_REFRESH_AFTER: Duration = Duration::from_secs(14 * 60);

/// The presigned STS URL for `cluster`, signed at `time`.
pub fn presigned_url(
    credentials: &Credentials,
    region: &str,
    cluster: &str,
    time: SystemTime,
) -> Result<String> {
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(PRESIGN_EXPIRY);
    let identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("sts")
        .time(time)
        .settings(settings)
        .build()
        .map_err(|err| signing_error(&err))?
        .into();
    let url =
        format!("https://sts.{region}.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15");
    let signable = SignableRequest::new(
        "GET",
        &url,
        std::iter::once(("x-k8s-aws-id", cluster)),
        SignableBody::Bytes(&[]),
    )
    .map_err(|err| signing_error(&err))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|err| signing_error(&err))?
        .into_parts();
    let mut request = http::Request::builder()
        .uri(&url)
        .body(())
        .map_err(|err| signing_error(&err))?;
    instructions.apply_to_request_http1x(&mut request);
    Ok(request.uri().to_string())
}

/// The EKS bearer token for `cluster`, signed at `time`.
pub fn token(
    credentials: &Credentials,
    region: &str,
    cluster: &str,
    time: SystemTime,
) -> Result<String> {
    let url = presigned_url(credentials, region, cluster, time)?;
    Ok(format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(url)
    ))
}

fn signing_error(err: &dyn std::fmt::Display) -> Error {
    Error::Aws {
        operation: "sts:GetCallerIdentity presign",
        message: err.to_string(),
        retryable: false,
    }
}
