//! Which regions may take traffic: the health checks of `REGION_HEALTH_URLS`, done once per
//! alert before planning.

use std::collections::BTreeMap;

use super::RegionFailover;
use crate::error::{Error, Result};

/// Each region's health check result: `Ok` or why not.
pub type Health = BTreeMap<String, std::result::Result<(), String>>;

impl RegionFailover {
    /// The health-check client, built on first use (nothing at start-up).
    fn http(&self) -> Result<&reqwest::Client> {
        if let Some(client) = self.http.get() {
            return Ok(client);
        }
        let client = reqwest::Client::builder()
            .timeout(self.settings.health_timeout)
            .connect_timeout(self.settings.health_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|err| Error::Connect(format!("health-check HTTP client: {err}")))?;
        Ok(self.http.get_or_init(|| client))
    }

    /// Checks every configured region but the degraded one, concurrently.
    pub(super) async fn check_health(&self, degraded: &str) -> Result<Health> {
        let checks: Vec<_> = self
            .settings
            .health_urls
            .iter()
            .filter(|(region, _)| region != degraded)
            .collect();
        if checks.is_empty() {
            return Ok(BTreeMap::new());
        }
        let http = self.http()?;
        let timeout = self.settings.health_timeout;
        let results =
            futures::future::join_all(checks.into_iter().map(|(region, url)| async move {
                let result = match http.get(url).send().await {
                    Ok(response) if response.status().is_success() => Ok(()),
                    Ok(response) => Err(format!("HTTP {} from {url}", response.status().as_u16())),
                    Err(err) if err.is_timeout() => Err(format!(
                        "no answer from {url} within {}ms",
                        timeout.as_millis()
                    )),
                    Err(err) => Err(format!("{url} unreachable: {}", root_cause(&err))),
                };
                (region.clone(), result)
            }))
            .await;
        Ok(results.into_iter().collect())
    }
}

fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
