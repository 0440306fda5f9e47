//! The clusters one deployment serves, and which of them an alert is for.
//!
//! `CLUSTER_NAMES` lists them (`name` or `name@region` for a cluster outside `AWS_REGION`);
//! `CLUSTER_NAME` names a single one as before. Unset, the functions reach the one cluster
//! of the standard kubeconfig / in-cluster resolution and accept alerts for any cluster.
//! `CLUSTER_KUBECONFIGS` (`name=path,...`) reaches listed clusters through kubeconfig files
//! instead of EKS (local runs and tests). `MESH_CLUSTERS` names the clusters of the mesh a
//! mesh-wide change (region-failover) applies to; by default every listed cluster.
//!
//! An alert names its cluster with the `cluster` label (a Prometheus external label). With
//! one cluster listed an alert without the label is for it and one for another cluster is
//! skipped; with several, an alert must name one of them or it fails and changes nothing.

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::guard::skip::SkipReason;

/// One cluster the functions act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSpec {
    /// The EKS cluster name, which alerts' `cluster` label must match.
    pub name: String,
    /// Its AWS region, when not the function's own.
    pub region: Option<String>,
    /// Reach it through this kubeconfig instead of EKS.
    pub kubeconfig: Option<PathBuf>,
}

/// The clusters in force.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Clusters {
    /// Listed clusters, in order; empty means the kubeconfig / in-cluster default.
    pub specs: Vec<ClusterSpec>,
    /// The clusters a mesh-wide change applies to (names from `specs`).
    pub mesh: Vec<String>,
}

/// Which cluster(s) a request goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The one cluster of the kubeconfig default (no cluster listed).
    Default,
    /// This listed cluster.
    One(String),
    /// Not for these functions (one cluster listed, the alert names another).
    Skip(SkipReason),
    /// Cannot be told apart: several clusters listed and the alert names none of them.
    Unknown(String),
}

impl Clusters {
    /// Reads `CLUSTER_NAMES` (or `CLUSTER_NAME`), `CLUSTER_KUBECONFIGS` and `MESH_CLUSTERS`.
    pub fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<Clusters> {
        let kubeconfigs = kubeconfig_pairs(get("CLUSTER_KUBECONFIGS").as_deref())?;
        let (var, listed) = match (get("CLUSTER_NAMES"), get("CLUSTER_NAME")) {
            (Some(_), Some(_)) => {
                return Err(Error::Config {
                    var: "CLUSTER_NAME",
                    message: "set together with CLUSTER_NAMES; use CLUSTER_NAMES alone".into(),
                });
            }
            (Some(list), None) => ("CLUSTER_NAMES", list),
            (None, Some(one)) => ("CLUSTER_NAME", one),
            // Kubeconfig-only clusters (tests, local runs) may be listed there alone.
            (None, None) => (
                "CLUSTER_KUBECONFIGS",
                kubeconfigs
                    .iter()
                    .map(|(name, _)| name.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        };
        let mut specs: Vec<ClusterSpec> = Vec::new();
        for entry in listed.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let spec = parse_entry(entry).map_err(|message| Error::Config { var, message })?;
            if specs.iter().any(|s| s.name == spec.name) {
                return Err(Error::Config {
                    var,
                    message: format!("cluster {} is listed twice", spec.name),
                });
            }
            specs.push(spec);
        }
        for (name, path) in kubeconfigs {
            let spec = specs
                .iter_mut()
                .find(|s| s.name == name)
                .ok_or_else(|| Error::Config {
                    var: "CLUSTER_KUBECONFIGS",
                    message: format!(
                        "names cluster {} that {var} does not list",
                        crate::intake::names::printable(&name)
                    ),
                })?;
            spec.kubeconfig = Some(path);
        }
        let mesh = match get("MESH_CLUSTERS") {
            None => specs.iter().map(|s| s.name.clone()).collect(),
            Some(list) => {
                let mut mesh = Vec::new();
                for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    if !specs.iter().any(|s| s.name == name) {
                        return Err(Error::Config {
                            var: "MESH_CLUSTERS",
                            message: format!(
                                "names cluster {} that {var} does not list",
                                crate::intake::names::printable(name)
                            ),
                        });
                    }
                    if !mesh.iter().any(|m| m == name) {
                        mesh.push(name.to_owned());
                    }
                }
                mesh
            }
        };
        Ok(Clusters { specs, mesh })
    }

    /// Whether more than one cluster is served (targets then carry their cluster's name).
    pub fn several(&self) -> bool {
        self.specs.len() > 1
    }

    fn names(&self) -> String {
        self.specs
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The cluster a request naming `label` (the alert's `cluster` label, or a revert
    /// request's `cluster`) goes to.
    pub fn route(&self, label: Option<&str>) -> Route {
        match (self.specs.as_slice(), label) {
            ([], _) => Route::Default,
            ([only], None) => Route::One(only.name.clone()),
            ([only], Some(theirs)) if theirs == only.name => Route::One(only.name.clone()),
            ([only], Some(theirs)) => Route::Skip(SkipReason::OtherCluster {
                alert: crate::intake::names::printable(theirs),
                ours: only.name.clone(),
            }),
            (_, Some(theirs)) if self.specs.iter().any(|s| s.name == theirs) => {
                Route::One(theirs.to_owned())
            }
            (_, Some(theirs)) => Route::Unknown(format!(
                "unknown cluster {}: this deployment serves {} (CLUSTER_NAMES)",
                crate::intake::names::printable(theirs),
                self.names()
            )),
            (_, None) => Route::Unknown(format!(
                "unknown cluster: none named, and this deployment serves {} (CLUSTER_NAMES)",
                self.names()
            )),
        }
    }

    /// Where a mesh-wide change for a request routed to `route` goes: every mesh cluster
    /// when several are served, else just the routed one.
    pub fn mesh_targets(&self, route: &Route) -> Vec<Option<String>> {
        match route {
            Route::One(_) if self.several() && !self.mesh.is_empty() => {
                self.mesh.iter().cloned().map(Some).collect()
            }
            Route::One(name) => vec![Some(name.clone())],
            _ => vec![None],
        }
    }

    /// Every listed cluster by name (a revert request for `all`).
    pub fn all(&self) -> Vec<Option<String>> {
        if self.specs.is_empty() {
            vec![None]
        } else {
            self.specs.iter().map(|s| Some(s.name.clone())).collect()
        }
    }

    /// The spec of a listed cluster.
    pub fn spec(&self, name: &str) -> Option<&ClusterSpec> {
        self.specs.iter().find(|s| s.name == name)
    }
}

/// `name=path,...` pairs.
fn kubeconfig_pairs(value: Option<&str>) -> Result<Vec<(String, PathBuf)>> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    value
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((name, path)) => Ok((name.trim().to_owned(), PathBuf::from(path.trim()))),
            None => Err(Error::Config {
                var: "CLUSTER_KUBECONFIGS",
                message: format!(
                    "\"{}\" is not name=path",
                    crate::intake::names::printable(pair)
                ),
            }),
        })
        .collect()
}

/// `name` or `name@region`.
fn parse_entry(entry: &str) -> std::result::Result<ClusterSpec, String> {
    let (name, region) = match entry.split_once('@') {
        Some((name, region)) => (name.trim(), Some(region.trim())),
        None => (entry, None),
    };
    let valid_name = !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid_name {
        return Err(format!(
            "\"{}\" is not a valid EKS cluster name",
            crate::intake::names::printable(name)
        ));
    }
    if let Some(region) = region {
        let valid_region = !region.is_empty()
            && region.len() <= 32
            && region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid_region {
            return Err(format!(
                "\"{}\" is not an AWS region (in {})",
                crate::intake::names::printable(region),
                crate::intake::names::printable(entry)
            ));
        }
    }
    Ok(ClusterSpec {
        name: name.to_owned(),
        region: region.map(str::to_owned),
        kubeconfig: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn clusters(vars: &[(&str, &str)]) -> Result<Clusters> {
        let map: HashMap<&str, &str> = vars.iter().copied().collect();
        Clusters::from_lookup(&|k: &str| map.get(k).map(|v| (*v).to_owned()))
    }

    #[test]
    fn one_cluster_keeps_the_single_cluster_behaviour() {
        let one = clusters(&[("CLUSTER_NAME", "prod-eu")]).expect("one");
        assert!(!one.several());
        assert_eq!(one.route(None), Route::One("prod-eu".into()));
        assert_eq!(one.route(Some("prod-eu")), Route::One("prod-eu".into()));
        assert!(matches!(one.route(Some("prod-us")), Route::Skip(_)));
        assert_eq!(one.mesh_targets(&one.route(None)), [Some("prod-eu".into())]);
        let none = clusters(&[]).expect("none");
        assert_eq!(none.route(Some("anything")), Route::Default);
        assert_eq!(none.mesh_targets(&Route::Default), [None]);
    }

    #[test]
    fn several_clusters_need_a_known_cluster_label() {
        let fleet = clusters(&[
            ("CLUSTER_NAMES", "use1, usw2@us-west-2 ,euw1@eu-west-1"),
            ("MESH_CLUSTERS", "use1,euw1"),
        ])
        .expect("fleet");
        assert!(fleet.several());
        assert_eq!(fleet.specs[1].region.as_deref(), Some("us-west-2"));
        assert_eq!(fleet.route(Some("usw2")), Route::One("usw2".into()));
        let Route::Unknown(why) = fleet.route(None) else {
            panic!("no label")
        };
        assert!(why.starts_with("unknown cluster"), "{why}");
        assert!(why.contains("use1, usw2, euw1"), "{why}");
        assert!(matches!(fleet.route(Some("apse1")), Route::Unknown(_)));
        assert_eq!(
            fleet.mesh_targets(&Route::One("usw2".into())),
            [Some("use1".into()), Some("euw1".into())]
        );
    }

    #[test]
    fn bad_lists_fail_the_start_with_the_variable() {
        let err = |vars: &[(&str, &str)]| match clusters(vars) {
            Err(Error::Config { var, message }) => format!("{var}: {message}"),
            other => panic!("{other:?}"),
        };
        assert!(err(&[("CLUSTER_NAMES", "a,b c")]).starts_with("CLUSTER_NAMES: "));
        assert!(err(&[("CLUSTER_NAMES", "a,a")]).contains("twice"));
        assert!(err(&[("CLUSTER_NAMES", "a@EU")]).contains("not an AWS region"));
        assert!(err(&[("CLUSTER_NAMES", "a"), ("CLUSTER_NAME", "a")]).starts_with("CLUSTER_NAME:"));
        assert!(
            err(&[("CLUSTER_NAMES", "a"), ("MESH_CLUSTERS", "b")]).starts_with("MESH_CLUSTERS:")
        );
        assert!(
            err(&[("CLUSTER_NAMES", "a"), ("CLUSTER_KUBECONFIGS", "b=/x")])
                .starts_with("CLUSTER_KUBECONFIGS:")
        );
        let local = clusters(&[("CLUSTER_KUBECONFIGS", "a=/tmp/a,b=/tmp/b")]).expect("local");
        assert_eq!(local.specs.len(), 2);
        assert_eq!(
            local.spec("b").and_then(|s| s.kubeconfig.clone()),
            Some(PathBuf::from("/tmp/b"))
        );
    }
}
