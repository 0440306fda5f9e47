#!/usr/bin/env python3
"""Regenerate the sample SNS events in events/ from real Alertmanager output.

For each function it starts prometheus-alertmanager with the shipped configuration and
template (deploy/alertmanager/), posts the alert the Prometheus rule would send
(deploy/prometheus/remediation-rules.yml; the annotations are the ones its promtool tests
expect), captures the SNS Publish call and wraps it as the event Lambda receives from SNS:

  events/<function>-firing.json     the alert firing
  events/<function>-resolved.json   the same alert resolved
  events/<function>-drill.json      a chaos drill (label drill="true"; always a dry run)

Timestamps are fixed, so the files only change when the template or the alerts do; tests
refresh them before use. Other files in events/ are left alone.

Usage:
  .venv/bin/python scripts/render-events.py            # write the files
  .venv/bin/python scripts/render-events.py --check    # exit 1 if a file is out of date
  .venv/bin/python scripts/render-events.py error-rollback region-failover
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
import urllib.parse
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "python"))

import yaml  # noqa: E402

from am_harness import Alertmanager, SnsCapture, example_config, lambda_sns_event  # noqa: E402

EVENTS = REPO / "events"
RULES = REPO / "deploy" / "prometheus" / "remediation-rules.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "remediation-rules.test.yml"
PROMETHEUS_URL = "http://prometheus.monitoring:9090"

STARTS_AT = "2026-11-25T21:25:44.967Z"
FIRING_PUBLISHED = "2026-11-25T21:27:50.081Z"
ENDS_AT = "2026-11-25T21:40:44.967Z"
RESOLVED_PUBLISHED = "2026-11-25T21:41:50.081Z"

COMMON = {"namespace": "shop", "severity": "critical", "cluster": "demo", "auto_remediation": "active"}

# The demo mesh (namespace shop): which alert each function gets.
SCENARIOS = {
    "latency-restart": {"alertname": "IstioHighLatencyP95", "deployment": "checkout-v2", "service": "checkout"},
    "error-rollback": {"alertname": "IstioHigh5xxRate", "service": "checkout", "version": "v2"},
    "db-circuit-break": {"alertname": "DatabaseTimeoutsHigh", "service": "orders", "db_host": "orders-db"},
    "region-failover": {"alertname": "RegionUnreachable", "service": "frontend", "region": "us-east-1"},
}


def rule_facts() -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """Per alertname: the rule's expression, and the annotations its promtool test expects."""
    exprs = {
        rule["alert"]: rule["expr"]
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    annotations: dict[str, dict[str, str]] = {}
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            for expected in case.get("exp_alerts") or []:
                labels = expected["exp_labels"]
                scenario = SCENARIOS.get(labels.get("remediation", ""))
                if scenario and all(labels.get(k) == v for k, v in scenario.items() if k != "alertname"):
                    annotations[labels["alertname"]] = expected["exp_annotations"]
    return exprs, annotations


def alert_for(function: str, exprs: dict, annotations: dict, **extra_labels: str) -> dict:
    scenario = SCENARIOS[function]
    name = scenario["alertname"]
    labels = {**scenario, "remediation": function, **COMMON, **extra_labels}
    # Prometheus links its canonical one-line form of the expression; close enough:
    expr = re.sub(r"\(\s+", "(", re.sub(r"\s+\)", ")", " ".join(exprs[name].split())))
    query = urllib.parse.quote_plus(expr)
    return {
        "labels": labels,
        "annotations": annotations[name],
        "startsAt": STARTS_AT,
        "generatorURL": f"{PROMETHEUS_URL}/graph?g0.expr={query}&g0.tab=1",
    }


def capture(alerts_in_order: list[list[dict]]) -> list[dict]:
    """Post each batch to a fresh Alertmanager, waiting for one publish per batch."""
    with SnsCapture() as sns, Alertmanager(example_config(sns.url)) as am:
        for n, batch in enumerate(alerts_in_order, start=1):
            am.post_alerts(batch)
            sns.wait_for(n, timeout=30)
        publishes = sns.wait_for(len(alerts_in_order), settle=0.5)
    if len(publishes) != len(alerts_in_order):
        raise RuntimeError(f"expected {len(alerts_in_order)} publishes, got {len(publishes)}")
    for p in publishes:
        if p["status"] != 200:
            raise RuntimeError(f"SNS would reject the publish: {p['problems']}")
    return publishes


def event(publish: dict, name: str, published: str) -> str:
    message_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"mesh-remediation/events/{name}"))
    data = lambda_sns_event(publish, published, message_id)
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def render(functions: list[str]) -> dict[str, str]:
    exprs, annotations = rule_facts()
    files: dict[str, str] = {}
    for function in functions:
        firing = alert_for(function, exprs, annotations)
        resolved = dict(firing, endsAt=ENDS_AT)
        first, second = capture([[firing], [resolved]])
        files[f"{function}-firing.json"] = event(first, f"{function}-firing.json", FIRING_PUBLISHED)
        files[f"{function}-resolved.json"] = event(second, f"{function}-resolved.json", RESOLVED_PUBLISHED)
        (drill,) = capture([[alert_for(function, exprs, annotations, drill="true")]])
        files[f"{function}-drill.json"] = event(drill, f"{function}-drill.json", FIRING_PUBLISHED)
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("functions", nargs="*", metavar="FUNCTION", help=f"any of {', '.join(SCENARIOS)} (default: all)")
    parser.add_argument("--check", action="store_true", help="compare with events/ instead of writing")
    args = parser.parse_args()
    unknown = set(args.functions) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown function(s): {', '.join(sorted(unknown))}")
    functions = args.functions or list(SCENARIOS)
    stale = []
    for name, text in render(functions).items():
        path = EVENTS / name
        current = path.read_text() if path.exists() else ""
        if args.check:
            if current != text:
                stale.append(name)
                sys.stdout.writelines(difflib.unified_diff(current.splitlines(True), text.splitlines(True), name, name, n=1))
        elif current != text:
            path.write_text(text)
            print(f"wrote events/{name}")
        else:
            print(f"unchanged events/{name}")
    if stale:
        print(f"out of date: {', '.join(stale)} (run scripts/render-events.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
