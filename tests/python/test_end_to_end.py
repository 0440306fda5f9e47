"""End to end on real components: Prometheus -> Alertmanager -> SNS (moto) -> Lambda runtime
emulator -> a real kube-apiserver (RBAC, admission policies, controllers, KWOK), each function
with its own group's token, with reports back on SNS. See e2e.py for the wiring."""

import subprocess

import pytest

import e2e

PACKAGES = e2e.FUNCTIONS


@pytest.fixture(scope="module", autouse=True)
def release_binaries():
    args = ["cargo", "build", "--release", "--quiet"]
    for package in PACKAGES:
        args += ["-p", package]
    subprocess.run(args, cwd=e2e.REPO, check=True)


def shop_state(flow):
    return {(o["kind"], o["metadata"]["name"]): o for o in flow.objects() if o["metadata"].get("namespace") == "shop"}


def stored(obj):
    """What a function could change (not status or resourceVersion, which a real cluster's
    controllers keep moving)."""
    return obj["metadata"].get("labels"), obj["metadata"].get("annotations"), obj["spec"]


def weights(vs):
    return {(r["destination"].get("subset") or r["destination"]["host"]): r.get("weight", 100)
            for h in vs["spec"]["http"] for r in h["route"]}


def applied(flow, function):
    return [o for f, o in flow.outcomes(function) if o["outcome"] == "applied"]


def test_each_trigger_acts_once_reports_once_and_recovery_follows_policy():
    flow = e2e.Flow(dry_run=False, functions=e2e.FUNCTIONS).start()
    try:
        before = shop_state(flow)
        flow.metrics.set_bad(True)
        flow.wait_until(lambda: all(applied(flow, f) for f in e2e.FUNCTIONS), 120, "every function to act")
        # Alertmanager re-sends the still-firing groups (repeat_interval 4s): wait for repeats.
        flow.wait_until(lambda: all(len([i for i in flow.invocations if i.function == f]) >= 2 for f in e2e.FUNCTIONS),
                        60, "repeated notifications")
        for function in e2e.FUNCTIONS:
            assert len(applied(flow, function)) == 1, (function, flow.summary())
        after = shop_state(flow)

        # latency-restart: exactly one rollout restart of checkout-v2.
        dep_before, dep_after = before[("Deployment", "checkout-v2")], after[("Deployment", "checkout-v2")]
        assert dep_after["metadata"]["generation"] == dep_before["metadata"]["generation"] + 1
        assert "kubectl.kubernetes.io/restartedAt" in dep_after["spec"]["template"]["metadata"]["annotations"]
        # error-rollback: all traffic to the stable version.
        assert weights(after[("VirtualService", "checkout")]) == {"v1": 100, "v2": 0}
        # db-circuit-break: circuit breaking on the orders DestinationRule, the rest kept.
        policy = after[("DestinationRule", "orders-db")]["spec"]["trafficPolicy"]
        assert "outlierDetection" in policy and "connectionPool" in policy
        assert policy["tls"] == before[("DestinationRule", "orders-db")]["spec"]["trafficPolicy"]["tls"]
        # region-failover: us-east-1 drained, its weight spread over the healthy regions.
        frontend = weights(after[("VirtualService", "frontend")])
        assert frontend["us-east-1"] == 0 and sum(frontend.values()) == 100, frontend
        # Nothing else was touched.
        for key in ("checkout-v1", "orders", "frontend", "payments"):
            assert stored(after[("Deployment", key)]) == stored(before[("Deployment", key)]), key

        # One report per action, carrying the trace id recorded on the object.
        reports = flow.reports()
        applied_reports = [r for r in reports if r["attributes"]["outcome"]["Value"] == "applied"]
        assert sorted(r["report"]["function"] for r in applied_reports) == sorted(e2e.FUNCTIONS), reports
        record = dep_after["metadata"]["annotations"]["auto-remediation.io/latency-restart"]
        restart_report = next(r for r in applied_reports if r["report"]["function"] == "latency-restart")
        assert restart_report["report"]["trace_id"] in record

        # Recovery: resolved alerts restore what the policy says and restart nothing.
        flow.metrics.set_bad(False)
        resolved = lambda f: [o for g, o in flow.outcomes(f) if o.get("status") == "resolved"]  # noqa: E731
        flow.wait_until(lambda: all(resolved(f) for f in e2e.FUNCTIONS), 120, "resolved notifications")
        recovered = shop_state(flow)
        # (Not metadata.generation: a real API server bumps a Deployment's generation for the
        # recovery record, an annotation.)
        assert recovered[("Deployment", "checkout-v2")]["spec"] == dep_after["spec"]
        # RESTORE_ON_RESOLVE defaults to true: the exact previous traffic policy is back.
        assert recovered[("DestinationRule", "orders-db")]["spec"] == before[("DestinationRule", "orders-db")]["spec"]
        # FAILBACK_ON_RESOLVE defaults to false: traffic stays on the healthy regions.
        assert weights(recovered[("VirtualService", "frontend")]) == frontend
        # error-rollback does not roll forward by itself.
        assert weights(recovered[("VirtualService", "checkout")]) == {"v1": 100, "v2": 0}
    finally:
        flow.close()


def test_dry_run_changes_nothing_and_reports_the_patches():
    flow = e2e.Flow(dry_run=True, functions=e2e.FUNCTIONS).start()
    try:
        before = shop_state(flow)
        flow.metrics.set_bad(True)
        dry = lambda f: [o for g, o in flow.outcomes(f) if o["outcome"] == "dry-run"]  # noqa: E731
        flow.wait_until(lambda: all(dry(f) for f in e2e.FUNCTIONS), 120, "every function's dry run")
        after = shop_state(flow)
        for key, obj in before.items():
            assert stored(after[key]) == stored(obj), key
            assert after[key]["metadata"].get("generation") == obj["metadata"].get("generation"), key
        for function in e2e.FUNCTIONS:
            assert all(o.get("patch") for o in dry(function)), function
            assert not applied(flow, function)
        reports = flow.reports()
        assert {r["report"]["function"] for r in reports if r["attributes"]["outcome"]["Value"] == "dry-run"} == set(e2e.FUNCTIONS)
    finally:
        flow.close()
