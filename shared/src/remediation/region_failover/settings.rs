//! region-failover's settings, from the environment.

use std::time::Duration;

use crate::config;
use crate::error::{Error, Result};
use crate::intake::names;

/// Failover settings, from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverSettings {
    /// `REGION_HEALTH_URLS` (`region=url,region=url`), in preference order.
    pub health_urls: Vec<(String, String)>,
    /// `HEALTH_CHECK_TIMEOUT_MS` (default 2000).
    pub health_timeout: Duration,
    /// `FAILBACK_ON_RESOLVE`: a resolved alert restores the previous config (default false).
    pub failback_on_resolve: bool,
}

impl Default for FailoverSettings {
    fn default() -> Self {
        FailoverSettings {
            health_urls: Vec::new(),
            health_timeout: Duration::from_millis(2000),
            failback_on_resolve: false,
        }
    }
}

impl FailoverSettings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the settings through `lookup`; a bad value names its variable.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let get = config::trimmed(lookup);
        let defaults = FailoverSettings::default();
        let bad = |message: String| Error::Config {
            var: "REGION_HEALTH_URLS",
            message,
        };
        let mut health_urls: Vec<(String, String)> = Vec::new();
        for entry in get("REGION_HEALTH_URLS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let (region, url) = entry
                .split_once('=')
                .ok_or_else(|| bad(format!("\"{}\" is not region=url", names::printable(entry))))?;
            let (region, url) = (region.trim(), url.trim());
            names::label_value("region", region).map_err(bad)?;
            let parsed = reqwest::Url::parse(url).map_err(|err| {
                bad(format!(
                    "{region}: \"{}\" is not a URL: {err}",
                    names::printable(url)
                ))
            })?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(bad(format!("{region}: {url} is not an http(s) URL")));
            }
            if health_urls.iter().any(|(r, _)| r == region) {
                return Err(bad(format!("region {region} is listed twice")));
            }
            health_urls.push((region.to_owned(), url.to_owned()));
        }
        let timeout_ms = crate::variables::number(
            &get,
            "HEALTH_CHECK_TIMEOUT_MS",
            u64::try_from(defaults.health_timeout.as_millis()).unwrap_or(2000),
            1,
        )?;
        Ok(FailoverSettings {
            health_urls,
            health_timeout: Duration::from_millis(timeout_ms),
            failback_on_resolve: crate::variables::boolean(
                &get,
                "FAILBACK_ON_RESOLVE",
                defaults.failback_on_resolve,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<FailoverSettings> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        FailoverSettings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn settings_are_read_and_bad_ones_name_the_variable() {
        let s = settings(&[
            (
                "REGION_HEALTH_URLS",
                "us-west-2=https://health.us-west-2.example.com/ready, eu-west-1=http://10.0.0.1:8080/",
            ),
            ("HEALTH_CHECK_TIMEOUT_MS", "500"),
        ])
        .expect("valid");
        assert_eq!(s.health_urls.len(), 2);
        assert_eq!(s.health_urls[1].0, "eu-west-1");
        assert_eq!(s.health_timeout, Duration::from_millis(500));
        assert!(!s.failback_on_resolve);
        for (var, value) in [
            ("REGION_HEALTH_URLS", "us-west-2"),
            ("REGION_HEALTH_URLS", "us-west-2=not a url"),
            ("REGION_HEALTH_URLS", "us-west-2=ftp://x/"),
            ("REGION_HEALTH_URLS", "a=http://x/,a=http://y/"),
            ("REGION_HEALTH_URLS", "-bad-=http://x/"),
            ("HEALTH_CHECK_TIMEOUT_MS", "0"),
            ("FAILBACK_ON_RESOLVE", "perhaps"),
        ] {
            match settings(&[(var, value)]) {
                Err(Error::Config { var: got, .. }) => assert_eq!(got, var, "{value}"),
                other => panic!("{var}={value}: {other:?}"),
            }
        }
    }
}
