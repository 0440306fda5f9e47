//! Where Istio would still send requests to the failing version whatever the function
//! changed: a host that names no Service, a VirtualService some clients do not see, two for
//! one host, a mirror, a client team's own routes, a VirtualService with no stable
//! destination beside one that has. The function refuses and changes nothing; the oracle
//! shows why where the reason is Istio's.

use std::collections::BTreeSet;

use remediation_testkit::istio_oracle::{CLIENTS_NS, client_namespace, clients};
use remediation_testkit::mesh::{Kind, Mesh};
use serde_json::json;

use super::{
    FAILING_POD, PORT, assert_every_client_reaches_the_canary, assert_refused, checkout,
    checkout_with_subsets, compile, fqdn, reached, route_checkout, split, subsets_of,
};

#[tokio::test]
async fn a_namespace_qualified_host_is_no_service_host_and_is_refused() {
    let (cluster, world) = checkout_with_subsets("ivr-nsq").await;
    let ns = cluster.namespace.clone();
    let qualified = format!("checkout.{ns}");
    Mesh::new(&cluster)
        .opted_in(
            Kind::VirtualService,
            "checkout",
            json!({"hosts": [qualified], "http": [split("checkout", 80, 20)]}),
        )
        .await;
    // Istio takes `checkout.<ns>` literally: the VirtualService routes no Service, and every
    // client reaches both versions through the Service's default route.
    let before = compile(&cluster, &world, &clients(&ns)).await;
    for client in clients(&ns) {
        let clusters = before
            .proxy(client.name)
            .clusters_receiving(&fqdn(&ns), PORT);
        assert_eq!(
            clusters,
            BTreeSet::from([format!("outbound|{PORT}||{}", fqdn(&ns))]),
            "{}",
            client.name
        );
    }
    assert_every_client_reaches_the_canary(&before, &ns);
    assert_refused(&cluster, "would still reach version v2").await;
}

#[tokio::test]
async fn a_virtual_service_exported_only_to_its_namespace_is_refused() {
    let (cluster, world) = checkout_with_subsets("ivr-export").await;
    let ns = cluster.namespace.clone();
    Mesh::new(&cluster)
        .opted_in(
            Kind::VirtualService,
            "checkout",
            json!({"hosts": ["checkout"], "exportTo": ["."], "http": [split("checkout", 100, 0)]}),
        )
        .await;
    // Even at 100/0, clients in other namespaces do not see the VirtualService and reach
    // the canary through the Service: rolling back this object cannot stop that.
    let compiled = compile(&cluster, &world, &clients(&ns)).await;
    for client in clients(&ns) {
        let reaches = reached(&compiled, &ns, &client).contains(FAILING_POD);
        assert_eq!(reaches, client.namespace == CLIENTS_NS, "{}", client.name);
    }
    assert_refused(&cluster, "exported to every namespace").await;
}

#[tokio::test]
async fn two_virtual_services_for_one_sidecar_host_are_refused() {
    let (cluster, world) = checkout_with_subsets("ivr-twins").await;
    let ns = cluster.namespace.clone();
    let mesh = Mesh::new(&cluster);
    for (name, canary) in [("checkout-a", 20), ("checkout-b", 50)] {
        mesh.opted_in(
            Kind::VirtualService,
            name,
            json!({"hosts": ["checkout"], "http": [split("checkout", 100 - canary, canary)]}),
        )
        .await;
    }
    let compiled = compile(&cluster, &world, &clients(&ns)).await;
    let weights: Vec<Vec<u32>> = compiled
        .proxy("same-ns-east")
        .routes_to(&fqdn(&ns), PORT)
        .iter()
        .map(|r| r.clusters.iter().map(|c| c.weight).collect())
        .collect();
    assert_eq!(
        weights.len(),
        1,
        "Istio gives sidecars the routes of only one of the two: {weights:?}"
    );
    assert_refused(&cluster, "which one is undefined").await;
}

#[tokio::test]
async fn a_mirror_to_the_failing_version_is_refused_and_nothing_changes() {
    let (cluster, _world) = checkout_with_subsets("ivr-mirror").await;
    let mut route = split("checkout", 80, 20);
    route["mirror"] = json!({"host": "checkout", "subset": "canary"});
    route["mirrorPercentage"] = json!({"value": 10.0});
    route_checkout(&cluster, json!({}), json!([route])).await;
    assert_refused(&cluster, "mirrors requests to").await;
}

#[tokio::test]
async fn a_client_namespace_own_virtual_service_to_the_failing_version_is_refused_and_named() {
    let (cluster, _world) = checkout_with_subsets("ivr-client-vs").await;
    let ns = cluster.namespace.clone();
    route_checkout(&cluster, json!({}), json!([split("checkout", 80, 20)])).await;
    // The web team routes checkout for their own clients (exportTo "."), canary included.
    let web = client_namespace(&cluster, "web").await;
    Mesh::in_namespace(&cluster, &web)
        .opted_in(
            Kind::VirtualService,
            "checkout-for-web",
            json!({"hosts": [fqdn(&ns)], "exportTo": ["."], "http": [split(&fqdn(&ns), 50, 50)]}),
        )
        .await;
    assert_refused(&cluster, &format!("{web}/checkout-for-web")).await;
}

#[tokio::test]
async fn when_one_virtual_service_cannot_be_rolled_back_none_is() {
    // Found by the generated meshes: `checkout` has no stable destination to roll back to,
    // while `public` (another host, routing to checkout) could be; rolling back only
    // `public` would leave the sidecars on v2 and change an object of a failed alert.
    let (cluster, _world) = checkout("ivr-all-or-nothing").await;
    let ns = cluster.namespace.clone();
    subsets_of(&cluster, &[("v1", "v1"), ("v2", "v2")]).await;
    route_checkout(
        &cluster,
        json!({}),
        json!([{"route": [{"destination": {"host": "checkout", "subset": "v2"}}]}]),
    )
    .await;
    Mesh::new(&cluster)
        .opted_in(
            Kind::VirtualService,
            "public",
            json!({"hosts": [format!("{ns}.example.com")], "http": [{"route": [
                {"destination": {"host": "checkout", "subset": "v1"}, "weight": 0},
                {"destination": {"host": "checkout", "subset": "v2"}, "weight": 100}]}]}),
        )
        .await;
    assert_refused(&cluster, "VirtualService").await;
}
