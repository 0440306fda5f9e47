//! The EKS bearer token must equal what botocore (`aws eks get-token`) computes.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use base64::Engine as _;
use mesh_remediation::cluster::eks;
use serde_json::Value;

fn vectors() -> Vec<Value> {
    let raw = include_str!("data/eks-token-vectors.json");
    let doc: Value = serde_json::from_str(raw).expect("vectors parse");
    doc["vectors"].as_array().expect("vectors array").clone()
}

fn query_pairs(url: &str) -> Vec<(String, String)> {
    let query = url.split_once('?').expect("url has a query").1;
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("key=value");
            (k.to_owned(), v.to_owned())
        })
        .collect();
    pairs.sort();
    pairs
}

fn sign(v: &Value) -> String {
    let creds = Credentials::new(
        v["access_key_id"].as_str().expect("key"),
        v["secret_access_key"].as_str().expect("secret"),
        v["session_token"].as_str().map(str::to_owned),
        None,
        "vector",
    );
    let time: SystemTime =
        chrono::DateTime::parse_from_rfc3339(v["signing_time_utc"].as_str().expect("time"))
            .expect("rfc3339")
            .into();
    eks::token(
        &creds,
        v["region"].as_str().expect("region"),
        v["cluster"].as_str().expect("cluster"),
        time,
    )
    .expect("token")
}

#[test]
fn token_matches_botocore_reference_vectors() {
    let vectors = vectors();
    assert!(!vectors.is_empty());
    for v in vectors {
        let token = sign(&v);
        assert!(token.starts_with(eks::TOKEN_PREFIX));
        let encoded = &token[eks::TOKEN_PREFIX.len()..];
        assert!(!encoded.contains('='), "token must be unpadded base64url");
        let url = String::from_utf8(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(encoded)
                .expect("base64url"),
        )
        .expect("utf-8 url");
        let expected = v["presigned_url"].as_str().expect("url");
        assert_eq!(url.split('?').next(), expected.split('?').next());
        // Same parameters (order may differ), hence the same signature.
        assert_eq!(
            query_pairs(&url),
            query_pairs(expected),
            "cluster {}",
            v["cluster"]
        );
    }
}

#[test]
fn token_depends_on_cluster_and_time() {
    let v = &vectors()[0];
    let mut other = v.clone();
    other["cluster"] = Value::String("another-cluster".into());
    assert_ne!(sign(v), sign(&other));
    let mut later = v.clone();
    later["signing_time_utc"] = Value::String("2024-01-01T00:15:00Z".into());
    assert_ne!(sign(v), sign(&later));
}
