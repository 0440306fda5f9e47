"""Did it help? End to end on real components: the release bootstraps under the Lambda
emulator act on the real control plane, queue their verify requests on moto's SQS, and judge
them on the real Prometheus (scraping the flow's synthetic mesh metrics) when the queue
delivers them: a restart and a breaker that helped are `verified`, a drain that did not help is
`not recovered` and handed off, a rollback after which the stable version fails is `worse`,
undone and handed off; a verify request delivered twice acts once.

The checks are the functions' defaults (shared/src/verify/checks.rs) with their rate windows
shortened as the flow shortens the rules' (5m -> 10s), so the verdicts take seconds."""

from __future__ import annotations

import json
import subprocess

import pytest

import e2e

ESCALATED = "auto-remediation.io/escalated"


@pytest.fixture(scope="module", autouse=True)
def release_binaries():
    args = ["cargo", "build", "--release", "--quiet"]
    for package in e2e.FUNCTIONS:
        args += ["-p", package]
    subprocess.run(args, cwd=e2e.REPO, check=True)


def outcomes_of(response: dict) -> list[dict]:
    return response.get("outcomes", [])


def annotations(obj: dict) -> dict:
    return obj["metadata"].get("annotations", {})


def verification(obj: dict, function: str) -> dict:
    return json.loads(annotations(obj)[f"auto-remediation.io/{function}"]).get("verification", {})


def weights(vs: dict) -> dict:
    return {(r["destination"].get("subset") or r["destination"]["host"]): r.get("weight", 100)
            for h in vs["spec"]["http"] for r in h["route"]}


def test_every_applied_change_gets_its_verdict_from_prometheus():
    flow = e2e.Flow(dry_run=False, functions=e2e.FUNCTIONS, function_env=e2e.verification_env(), verify=True).start()
    try:
        flow.metrics.override(e2e.FRONTEND_ERRORING)
        before_vs = flow.object("VirtualService", "checkout")
        flow.metrics.set_bad(True)
        applied = lambda f: [o for g, o in flow.outcomes(f) if o["outcome"] == "applied"]  # noqa: E731
        flow.wait_until(lambda: all(applied(f) for f in e2e.FUNCTIONS), 120, "every function to act")
        for function in e2e.FUNCTIONS:
            assert len(applied(function)) == 1, flow.summary()

        flow.metrics.override(e2e.AFTER_THE_CHANGES)
        e2e.wait_for_the_changes_to_show(flow)

        verdicts = {}
        for function in e2e.FUNCTIONS:
            ((event, response),) = flow.deliver_verifications(function)
            (outcome,) = outcomes_of(response)
            verdicts[function] = (outcome, event)
        summary = {f: (o["outcome"], o.get("reason")) for f, (o, _) in verdicts.items()}

        restart, _ = verdicts["latency-restart"]
        assert restart["outcome"] == "skipped" and restart["reason"].startswith("verified: "), summary
        assert "rollout complete" in restart["reason"], summary
        breaker, _ = verdicts["db-circuit-break"]
        assert breaker["outcome"] == "skipped" and breaker["reason"].startswith("verified: "), summary
        drain, _ = verdicts["region-failover"]
        assert drain["outcome"] == "escalated" and drain["reason"].startswith("not-recovered: "), summary
        rollback, rollback_event = verdicts["error-rollback"]
        assert rollback["outcome"] == "escalated" and rollback["reason"].startswith("worse: "), summary
        evidence = {e["check"]: e for e in rollback["verification"]["evidence"]}
        assert evidence["error_ratio"]["before"] == 0 and evidence["error_ratio"]["now"] >= 0.49, evidence

        # On the objects: the worse rollback undone to the exact routes before, and handed off;
        # the drain handed off and kept; the verified changes recorded, nobody paged.
        checkout = flow.object("VirtualService", "checkout")
        assert weights(checkout) == weights(before_vs), weights(checkout)
        assert verification(checkout, "error-rollback")["state"] == "worse"
        assert verification(checkout, "error-rollback")["undone"] is True
        assert ESCALATED in annotations(checkout)
        frontend = flow.object("VirtualService", "frontend")
        assert weights(frontend)["us-east-1"] == 0
        assert verification(frontend, "region-failover")["state"] == "not-recovered"
        assert ESCALATED in annotations(frontend)
        deployment = flow.object("Deployment", "checkout-v2")
        assert verification(deployment, "latency-restart")["state"] == "verified"
        assert ESCALATED not in annotations(deployment)
        assert verification(flow.object("DestinationRule", "orders-db"), "db-circuit-break")["state"] == "verified"

        # Delivered again: nothing changes.
        stored = flow.object("VirtualService", "checkout")
        (again,) = outcomes_of(flow.invoke("error-rollback", rollback_event))
        assert again["outcome"] == "skipped" and again["reason"].startswith("already verified: worse"), again
        assert flow.object("VirtualService", "checkout")["metadata"]["resourceVersion"] == stored["metadata"]["resourceVersion"]

        # The verdicts were reported on the notification topic with their evidence.
        reports = [r["report"] for r in flow.reports()]
        reported = [o for r in reports for o in r.get("outcomes", []) if o.get("verification")]
        assert {o["verification"]["state"] for o in reported} == {"verified", "not-recovered", "worse"}, reported
    finally:
        flow.close()
