"""Time from alert to change on the real path, for scripts/bench (a benchmark, not a test).

Alertmanager (the real one, the project's config and template) publishes to the SNS emulator;
the SQS subscription with the function's filter policy is drained into the Lambda Runtime
Interface Emulator running the latency-restart bootstrap; the change lands in the real control
plane (scripts/test-cluster) with the function's own token. Per alert it measures from the
publish that first carried it (the SNS message's `Timestamp`, stamped by the emulator when
Alertmanager's request arrives) to the moment the restart is stored (the API server's watch
event for the Deployment, seen by this script).

ALERTS alerts over as many Deployments, in NAMESPACES namespaces (one Alertmanager group
each: group_by has `namespace`), one namespace's alerts posted every SPACING seconds. The
budgets are switched off (they would stop at 20 changes); everything else is the template's
default. Prints one JSON line.

    .venv/bin/python tests/python/alert_latency.py [--alerts 100] [--namespaces 20] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import e2e  # noqa: E402
import kube_cluster  # noqa: E402

LABEL = "mesh-remediation.bench/alert-latency"
SPACING = 1.0
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"


def deployment(name: str) -> dict:
    labels = {"app": name, "auto_remediation": "active", LABEL: "yes"}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        # No replicas: the figure is the function's path, not a scheduler's.
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "app", "image": "app"}]}}},
    }


def alert(namespace: str, name: str) -> dict:
    now = datetime.now(timezone.utc).isoformat()
    return {
        "labels": {"alertname": "IstioHighLatencyP95", "remediation": "latency-restart", "severity": "critical",
                   "cluster": "demo", "namespace": namespace, "deployment": name, "service": name,
                   "auto_remediation": "active"},
        "annotations": {"summary": f"P95 latency high on {name} in {namespace}"},
        "startsAt": now,
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def watch_restarts(cluster: kube_cluster.RealCluster, seen: dict, opened: threading.Event,
                   done: threading.Event) -> None:
    """Records when each bench Deployment's restart is first stored; `opened` once the watch
    is (its first event: a watch from no version starts with every existing object)."""
    while not done.is_set():
        try:
            for event in cluster.watch("/apis/apps/v1/deployments", timeout=60):
                at = time.time()
                opened.set()
                obj = event.get("object", {})
                meta = obj.get("metadata", {})
                if LABEL not in meta.get("labels", {}):
                    continue
                annotations = obj.get("spec", {}).get("template", {}).get("metadata", {}).get("annotations") or {}
                if RESTARTED_AT in annotations:
                    seen.setdefault((meta["namespace"], meta["name"]), at)
                if done.is_set():
                    return
        except OSError:
            continue  # the watch ended (its timeout) or was cut: watch again


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--alerts", type=int, default=100)
    parser.add_argument("--namespaces", type=int, default=20)
    parser.add_argument("--json")
    args = parser.parse_args()
    per_namespace = -(-args.alerts // args.namespaces)
    budgets_off = {"MAX_ACTIONS_PER_WINDOW": "0", "MAX_CLUSTER_ACTIONS_PER_WINDOW": "0",
                   "MAX_TARGETS_PER_INVOCATION": str(per_namespace)}
    flow = e2e.Flow(dry_run=False, functions=["latency-restart"], env=budgets_off).start()
    try:
        cluster = flow.kube
        targets = []
        for n in range(args.namespaces):
            namespace = f"alert-latency-{n:02d}"
            cluster.create("/api/v1/namespaces", {"metadata": {"name": namespace}})
            for i in range(per_namespace):
                if len(targets) == args.alerts:
                    break
                name = f"app-{i:02d}"
                cluster.create(f"/apis/apps/v1/namespaces/{namespace}/deployments", deployment(name))
                targets.append((namespace, name))
        # Acting on a Deployment the controller has not observed yet is refused (rollout in
        # progress): wait until every one is.
        kube_cluster.wait_for(lambda: all(kube_cluster.settled(cluster.get(
            f"/apis/apps/v1/namespaces/{ns}/deployments/{name}")) for ns, name in targets), 120,
            "the Deployments to be observed")

        seen: dict[tuple[str, str], float] = {}
        opened, done = threading.Event(), threading.Event()
        watcher = threading.Thread(target=watch_restarts, args=(cluster, seen, opened, done), daemon=True)
        watcher.start()
        if not opened.wait(30):
            raise TimeoutError("the Deployment watch did not open")
        by_namespace: dict[str, list[str]] = {}
        for namespace, name in targets:
            by_namespace.setdefault(namespace, []).append(name)
        for namespace, names in by_namespace.items():
            flow.alertmanager.post_alerts([alert(namespace, name) for name in names])
            time.sleep(SPACING)  # load shaping: one group a second, not a readiness wait
        flow.wait_until(lambda: len(seen) == len(targets), 300, "every restart to be stored")
        done.set()

        # The publish that first carried each alert: the invocation that applied it.
        published: dict[tuple[str, str], e2e.Invocation] = {}
        for invocation in flow.invocations:
            for outcome in invocation.response.get("outcomes", []):
                if outcome.get("outcome") != "applied":
                    continue
                namespace, name = outcome["target"].split(" ", 1)[1].split("/", 1)
                published.setdefault((namespace, name), invocation)
        missing = [t for t in targets if t not in published]
        if missing:
            raise RuntimeError(f"no applied outcome for {missing[:5]}: {flow.summary()[:2000]}")
        total = [(seen[t] - published[t].published) * 1000 for t in targets]
        to_invoke = [(published[t].started - published[t].published) * 1000 for t in targets]
        in_function = [(seen[t] - published[t].started) * 1000 for t in targets]
        result = {
            "alerts": len(targets), "namespaces": len(by_namespace),
            "invocations": len({published[t].message_id for t in targets}),
            "p50_ms": round(statistics.median(total), 1), "p95_ms": round(percentile(total, 0.95), 1),
            "max_ms": round(max(total), 1),
            "publish_to_invoke_p50_ms": round(statistics.median(to_invoke), 1),
            "invoke_to_stored_p50_ms": round(statistics.median(in_function), 1),
            "invoke_to_stored_p95_ms": round(percentile(in_function, 0.95), 1),
        }
    finally:
        flow.close()
    line = json.dumps(result)
    print(line)
    if args.json:
        Path(args.json).write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
