//! Drawing one mesh from a seed.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::policy::Level;
use super::rng::Rng;
use super::{
    ClientSpec, DB_PORT, Database, GeneratedMesh, METRICS_PORT, OPT_IN, PREFIX, pick_namespaces,
    pick_regions,
};
use crate::generated::root_template;
use crate::istio_oracle::ready_pod;

/// Client namespaces (suffixes), apps with their tiers, database names, rule names.
const CLIENT_NAMESPACES: [&str; 3] = ["shop", "web", "jobs"];
const APPS: [(&str, &str); 5] = [
    ("orders", "backend"),
    ("checkout", "backend"),
    ("storefront", "frontend"),
    ("reports", "batch"),
    ("search", "backend"),
];
const DATABASES: [&str; 3] = ["orders-db", "ledger-db", "pg-main"];
const RULE_NAMES: [&str; 7] = [
    "orders-db",
    "db",
    "db-breaker",
    "db-policy",
    "postgres",
    "a-db-pool",
    "zz-db",
];
const REGION_LABEL: &str = "topology.kubernetes.io/region";

/// The generator's state: the random stream and what the mesh drawn so far allows.
pub(super) struct Gen {
    pub(super) rng: Rng,
    pub(super) regions: Vec<String>,
    /// The database is outside the mesh (a ServiceEntry).
    pub(super) external: bool,
    /// The database Service also serves the metrics port.
    pub(super) metrics_port: bool,
    next_ip: u32,
}

impl Gen {
    fn ip(&mut self, block: u32) -> String {
        self.next_ip += 1;
        format!(
            "10.{block}.{}.{}",
            self.next_ip / 200,
            self.next_ip % 200 + 10
        )
    }
}

impl GeneratedMesh {
    /// The mesh of `seed`, with names under the prefix `mesh`.
    pub fn generate(seed: u64) -> GeneratedMesh {
        let mut rng = Rng::new(seed);
        let regions = pick_regions(&mut rng, 2, 3);
        let mut g = Gen {
            rng,
            regions,
            external: false,
            metrics_port: false,
            next_ip: 0,
        };
        let client_namespaces = pick_namespaces(&mut g.rng, &CLIENT_NAMESPACES, 1, 3);
        let alert_namespace = g.rng.pick(&client_namespaces).clone();
        let db_namespace = if g.rng.chance(50) {
            // Half the time the database lives with its caller (a short `db_host`).
            alert_namespace.clone()
        } else if g.rng.chance(20) {
            g.rng.pick(&client_namespaces).clone()
        } else {
            format!("{PREFIX}-data")
        };
        let mut namespaces = client_namespaces.clone();
        if !namespaces.contains(&db_namespace) {
            namespaces.push(db_namespace.clone());
        }
        namespaces.push(root_template());

        let mut world = Vec::new();
        let mut with_clients = client_namespaces.clone();
        if !client_namespaces.contains(&db_namespace) && g.rng.chance(35) {
            // A job beside the database (migrations, backups) calls it too.
            with_clients.push(db_namespace.clone());
        }
        let clients = g.clients(&with_clients, &mut world);
        let calling_service = clients
            .iter()
            .find(|c| c.namespace == alert_namespace)
            .map(|c| c.labels["app"].clone())
            .expect("every client namespace has a client");

        let db_name = *g.rng.pick(&DATABASES);
        let database = *g.rng.pick(&[
            Database::Service,
            Database::Service,
            Database::Service,
            Database::StaticEntry,
            Database::DnsEntry,
        ]);
        let mut objects = Vec::new();
        let (db_host, db_host_label) = if database == Database::Service {
            objects.push(g.db_service(db_name, &db_namespace, &mut world));
            let fqdn = format!("{db_name}.{db_namespace}.svc.cluster.local");
            let label = if db_namespace == alert_namespace {
                db_name.to_owned()
            } else {
                fqdn.clone()
            };
            (fqdn, label)
        } else {
            g.external = true;
            let host = format!("{db_name}.{PREFIX}.db.example.com");
            objects.push(g.service_entry(&host, &db_namespace, database));
            (host.clone(), host)
        };

        let mut mesh = GeneratedMesh {
            seed,
            prefix: "mesh".into(),
            regions: g.regions.clone(),
            namespaces,
            alert_namespace,
            db_namespace,
            calling_service,
            db_host_label,
            db_host,
            database,
            objects,
            world,
            clients,
        };
        g.rules(&mut mesh, db_name);
        mesh
    }
}

impl Gen {
    /// One to three apps per client namespace, each with one or two sidecars, their pods
    /// and a Service of their own (port 8080) in `world`.
    fn clients(&mut self, namespaces: &[String], world: &mut Vec<Value>) -> Vec<ClientSpec> {
        let mut clients = Vec::new();
        for namespace in namespaces {
            let short = namespace.trim_start_matches(&format!("{PREFIX}-"));
            let count = self.rng.range(1, 2);
            for (app, tier) in self.rng.sample(&APPS, count) {
                world.push(json!({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": app, "namespace": namespace},
                    "spec": {"selector": {"app": app},
                             "ports": [{"name": "http", "port": 8080}]}}));
                for i in 0..self.rng.range(1, 2) {
                    let region = self.rng.pick(&self.regions).clone();
                    let version = *self.rng.pick(&["v1", "v2"]);
                    let labels = BTreeMap::from([
                        ("app".to_owned(), app.to_owned()),
                        ("tier".to_owned(), tier.to_owned()),
                        ("version".to_owned(), version.to_owned()),
                    ]);
                    let ip = self.ip(2);
                    world.push(pod(namespace, app, &labels, &region, &ip));
                    clients.push(ClientSpec {
                        name: format!("{short}-{app}-{i}"),
                        namespace: namespace.clone(),
                        region,
                        labels,
                    });
                }
            }
        }
        clients
    }

    /// The database Service (port 5432, sometimes 9187 too) and its pods in `world`: one
    /// primary, replicas, spread over the regions.
    fn db_service(&mut self, name: &str, namespace: &str, world: &mut Vec<Value>) -> Value {
        self.metrics_port = self.rng.chance(40);
        let mut ports = vec![json!({"name": "tcp-postgres", "port": DB_PORT, "protocol": "TCP"})];
        if self.metrics_port {
            ports.push(json!({"name": "http-metrics", "port": METRICS_PORT}));
        }
        let regions = if self.rng.chance(70) {
            self.regions.clone()
        } else {
            let count = self.rng.range(1, self.regions.len());
            self.rng.sample(&self.regions.clone(), count)
        };
        let mut role = "primary";
        for region in &regions {
            for _ in 0..self.rng.range(1, 2) {
                let labels = BTreeMap::from([
                    ("app".to_owned(), name.to_owned()),
                    ("role".to_owned(), role.to_owned()),
                ]);
                let ip = self.ip(1);
                world.push(pod(namespace, name, &labels, region, &ip));
                role = "replica";
            }
        }
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
               "spec": {"selector": {"app": name}, "ports": ports}})
    }

    /// A managed database outside the mesh: static endpoints in several localities, or a
    /// DNS name (itself, or endpoint names with localities).
    fn service_entry(&mut self, host: &str, namespace: &str, database: Database) -> Value {
        let mut spec = json!({"hosts": [host], "location": "MESH_EXTERNAL",
            "ports": [{"number": DB_PORT, "name": "tcp-postgres", "protocol": "TCP"}]});
        if self.rng.chance(50) {
            let vip = format!("240.240.{}.{}", self.rng.below(200), self.rng.range(1, 250));
            spec["addresses"] = json!([vip]);
        }
        let mut endpoints = Vec::new();
        let count = match database {
            Database::StaticEntry => self.rng.range(1, 3),
            _ if self.rng.chance(50) => 0,
            _ => self.rng.range(1, 2),
        };
        for i in 0..count {
            let region = self.rng.pick(&self.regions).clone();
            let role = if i == 0 { "primary" } else { "replica" };
            let address = if database == Database::StaticEntry {
                self.ip(3)
            } else {
                format!("{role}-{i}.{host}")
            };
            endpoints.push(
                json!({"address": address, "locality": format!("{region}/{region}a"),
                                  "labels": {"role": role}}),
            );
        }
        if database == Database::StaticEntry {
            spec["resolution"] = json!("STATIC");
        } else {
            spec["resolution"] = json!("DNS");
        }
        if !endpoints.is_empty() {
            spec["endpoints"] = Value::Array(endpoints);
        }
        json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
               "metadata": {"name": "database", "namespace": namespace}, "spec": spec})
    }

    /// One to five DestinationRules for the database host (mostly one or two), in creation
    /// order: usually one in the alert's namespace first, then others there, in the
    /// database's namespace, in other client namespaces and in the root namespace.
    fn rules(&mut self, mesh: &mut GeneratedMesh, db_name: &str) {
        let root = root_template();
        let others: Vec<String> = mesh
            .namespaces
            .iter()
            .filter(|n| **n != mesh.alert_namespace && **n != mesh.db_namespace && **n != root)
            .cloned()
            .collect();
        let count = *self.rng.pick(&[1, 1, 1, 2, 2, 3, 4, 5]);
        let mut taken: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for i in 0..count {
            let namespace = match self.rng.below(100) {
                _ if i == 0 && self.rng.chance(85) => mesh.alert_namespace.clone(),
                0..35 => mesh.alert_namespace.clone(),
                35..60 => mesh.db_namespace.clone(),
                60..80 if !others.is_empty() => self.rng.pick(&others).clone(),
                _ => root.clone(),
            };
            let used = taken.entry(namespace.clone()).or_default();
            let free: Vec<&str> = RULE_NAMES
                .iter()
                .copied()
                .filter(|n| !used.contains(n))
                .collect();
            let name = *self.rng.pick(&free);
            used.push(name);
            let rule = self.rule(mesh, &namespace, name, db_name);
            mesh.objects.push(rule);
        }
    }

    fn rule(&mut self, mesh: &GeneratedMesh, namespace: &str, name: &str, db: &str) -> Value {
        let mut labels = Map::new();
        if self.rng.chance(30) {
            labels.insert("team".into(), json!("data"));
        }
        // Owners opt in their rules, mostly in the alert's namespace; a rule elsewhere (the
        // root's, a client's) is written where it is opted in too.
        let chance = if namespace == mesh.alert_namespace {
            80
        } else {
            40
        };
        if self.rng.chance(chance) {
            labels.insert(OPT_IN.0.into(), json!(OPT_IN.1));
        }
        let host = if self.rng.chance(8) {
            // A wildcard covering the database host (a more specific rule wins over it).
            match mesh.database {
                Database::Service => format!("*.{}.svc.cluster.local", mesh.db_namespace),
                _ => format!("*.{PREFIX}.db.example.com"),
            }
        } else if mesh.database == Database::Service
            && namespace == mesh.db_namespace
            && self.rng.chance(60)
        {
            db.to_owned()
        } else {
            mesh.db_host.clone()
        };
        let mut spec = json!({ "host": host });
        let in_clients: Vec<&ClientSpec> = mesh
            .clients
            .iter()
            .filter(|c| c.namespace == namespace)
            .collect();
        let selector = !in_clients.is_empty() && self.rng.chance(20);
        if selector {
            let client = *self.rng.pick(&in_clients);
            let match_labels = match self.rng.below(5) {
                0 => json!({"app": "legacy"}),
                1 | 2 => json!({"tier": client.labels["tier"]}),
                _ => json!({"app": client.labels["app"]}),
            };
            spec["workloadSelector"] = json!({ "matchLabels": match_labels });
        }
        if let Some(export) = self.export_to(mesh, selector) {
            spec["exportTo"] = json!(export);
        }
        if self.rng.chance(80) {
            spec["trafficPolicy"] = self.policy(Level::Top);
        }
        let pool = self.subset_pool();
        let count = *self.rng.pick(&[0, 0, 1, 2, 3]);
        let subsets: Vec<Value> = self
            .rng
            .sample(&pool, count)
            .into_iter()
            .map(|(name, labels)| {
                let mut subset = json!({"name": name, "labels": labels});
                if self.rng.chance(35) {
                    subset["trafficPolicy"] = self.policy(Level::Subset);
                }
                subset
            })
            .collect();
        if !subsets.is_empty() {
            spec["subsets"] = Value::Array(subsets);
        }
        json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
               "metadata": {"name": name, "namespace": namespace, "labels": labels},
               "spec": spec})
    }

    /// `exportTo`: absent, `.`, `*` or a few of the mesh's namespaces; a rule with a
    /// `workloadSelector` may only stay in its namespace.
    fn export_to(&mut self, mesh: &GeneratedMesh, selector: bool) -> Option<Vec<String>> {
        if selector {
            return self.rng.chance(50).then(|| vec![".".to_owned()]);
        }
        match self.rng.below(100) {
            0..45 => None,
            45..60 => Some(vec![".".to_owned()]),
            60..75 => Some(vec!["*".to_owned()]),
            _ => {
                let count = self.rng.range(1, 2);
                Some(self.rng.sample(&mesh.namespaces, count))
            }
        }
    }

    /// Subsets by role and by region.
    fn subset_pool(&self) -> Vec<(String, Value)> {
        let mut pool = vec![
            ("primary".to_owned(), json!({"role": "primary"})),
            ("replicas".to_owned(), json!({"role": "replica"})),
        ];
        for region in &self.regions {
            pool.push((region.clone(), json!({ REGION_LABEL: region })));
        }
        pool
    }
}

/// A Ready pod of `app` with `labels` on the node of `region`, at `ip`.
fn pod(
    namespace: &str,
    app: &str,
    labels: &BTreeMap<String, String>,
    region: &str,
    ip: &str,
) -> Value {
    let name = format!("{app}-{}", ip.replace('.', "-"));
    ready_pod(namespace, &name, json!(labels), region, ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mesh_is_valid_and_the_seed_decides_it() {
        let mut rules = 0;
        let mut opted_in = 0;
        let mut opted_in_elsewhere = 0;
        for seed in 0..400 {
            let mesh = GeneratedMesh::generate(seed);
            assert_eq!(mesh, GeneratedMesh::generate(seed), "seed {seed}");
            if let Some(why) = mesh.invalid() {
                panic!("seed {seed}: {why}\n{}", mesh.to_yaml());
            }
            for (_, rule) in mesh.rules() {
                rules += 1;
                let opt_in = &rule["metadata"]["labels"][OPT_IN.0];
                if !opt_in.is_null() {
                    opted_in += 1;
                    if rule["metadata"]["namespace"] != mesh.alert_namespace {
                        opted_in_elsewhere += 1;
                    }
                }
            }
            assert!(
                mesh.clients
                    .iter()
                    .any(|c| c.namespace == mesh.alert_namespace)
            );
        }
        assert!(opted_in * 3 > rules, "{opted_in} of {rules} rules opted in");
        assert!(
            opted_in_elsewhere * 10 > opted_in,
            "{opted_in_elsewhere} of {opted_in} opted-in rules outside the alert's namespace"
        );
    }
}
