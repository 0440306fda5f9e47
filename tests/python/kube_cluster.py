"""The Kubernetes API of the end-to-end flow.

`RealCluster` is the real control plane that scripts/test-cluster starts (etcd, kube-apiserver
with RBAC, TLS and the admission policies, kube-controller-manager, kube-scheduler, KWOK as the
kubelet) with the demo mesh applied (`local/demo-mesh.yaml`); each function talks to it with its
own group's token.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import yaml

from am_harness import stop_process

REPO = Path(__file__).resolve().parents[2]
DEMO_NAMESPACE = "shop"
# What the demo mesh holds in its namespace, by list path.
LISTS = {
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
    "VirtualService": "/apis/networking.istio.io/v1/namespaces/{ns}/virtualservices",
    "DestinationRule": "/apis/networking.istio.io/v1/namespaces/{ns}/destinationrules",
}


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


def settled(deployment: dict) -> bool:
    """The rollout of the current generation is complete (what the functions check too)."""
    status, want = deployment.get("status", {}), deployment["spec"].get("replicas", 1)
    return (status.get("observedGeneration", 0) >= deployment["metadata"]["generation"]
            and status.get("updatedReplicas", 0) == want and status.get("readyReplicas", 0) == want
            and status.get("replicas", 0) == want)


class RealCluster:
    """A real control plane for one flow, stopped by the stack it is given."""

    def __init__(self, workdir: Path, stack: contextlib.ExitStack):
        demo = REPO / "local" / "demo-mesh.yaml"
        cluster_dir = workdir / "cluster"
        cluster_dir.mkdir()
        # Runs after the control plane stopped (the stack unwinds in reverse): the store is
        # tens of MB per flow; the logs stay for a look after a failure.
        stack.callback(shutil.rmtree, cluster_dir / "etcd-data", ignore_errors=True)
        ready = cluster_dir / "ready.json"
        self.log = open(cluster_dir / "harness.log", "wb")
        stack.callback(self.log.close)
        with open(ready, "wb") as out:
            proc = subprocess.Popen([str(REPO / "scripts" / "test-cluster"), "--dir", str(cluster_dir), "--apply", str(demo)],
                                    stdout=out, stderr=self.log)
        stack.callback(stop_process, proc)
        # A cold machine builds the control plane first (minutes); a warm one starts in seconds.
        try:
            wait_for(lambda: ready.stat().st_size > 0, 1800, "the control plane to start", proc)
        except RuntimeError as failed:
            self.log.flush()
            harness = (cluster_dir / "harness.log").read_text(errors="replace")[-4000:]
            raise RuntimeError(f"{failed}; its log ({cluster_dir}):\n{harness}") from None
        self.info = json.loads(ready.read_text())
        admin = yaml.safe_load(Path(self.info["kubeconfig"]).read_text())
        self.token = admin["users"][0]["user"]["token"]
        self.tls = ssl.create_default_context(cafile=self.info["ca_file"])
        wait_for(lambda: all(settled(d) for d in self.list("Deployment")), 120, "the demo Deployments to roll out")

    def kubeconfig(self, function: str) -> str:
        """The function's own kubeconfig: its group's token, so RBAC and admission apply."""
        return self.info["function_kubeconfigs"][function]

    def get(self, path: str) -> dict:
        request = urllib.request.Request(self.info["server"] + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=10, context=self.tls) as r:
            return json.load(r)

    def create(self, path: str, obj: dict) -> dict:
        """POSTs `obj` to the list at `path` as the cluster's admin."""
        request = urllib.request.Request(self.info["server"] + path, data=json.dumps(obj).encode(), method="POST",
                                         headers={"Authorization": f"Bearer {self.token}",
                                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10, context=self.tls) as r:
            return json.load(r)

    def watch(self, path: str, timeout: float):
        """The watch events of the list at `path`, as they arrive, for `timeout` seconds."""
        request = urllib.request.Request(f"{self.info['server']}{path}?watch=1&timeoutSeconds={int(timeout)}",
                                         headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=timeout + 10, context=self.tls) as r:
            for line in r:
                yield json.loads(line)

    def list(self, kind: str, namespace: str = DEMO_NAMESPACE) -> list[dict]:
        items = self.get(LISTS[kind].format(ns=namespace))["items"]
        for item in items:
            item["kind"] = kind  # a real server's list items carry no kind
        return items

    def objects(self) -> list[dict]:
        return [o for kind in LISTS for o in self.list(kind)]

