"""Every aggregation and vector match in the alerting rules keeps `cluster`, and Alertmanager
groups by it: on a ruler that evaluates over several clusters (Amazon Managed Service for
Prometheus, Thanos, Mimir) `cluster` is a series label, and a rule that dropped it would send
alerts a stack serving several clusters refuses as unknown. promtool's tests over two clusters'
series (deploy/prometheus/remediation-rules.test.yml) show the alerts carrying it; this test
holds every `by (...)` and `on (...)`, including ones added later."""

from __future__ import annotations

import re

import yaml

from am_harness import AM_CONFIG, REPO

RULES = REPO / "deploy" / "prometheus" / "remediation-rules.yml"


def test_every_aggregation_and_match_keeps_cluster():
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    assert len(rules) == 4
    for rule in rules:
        expr = rule["expr"]
        assert not re.search(r"\bwithout\s*\(", expr), rule["alert"]
        clauses = re.findall(r"\b(by|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr)
        assert clauses, rule["alert"]
        for kind, labels in clauses:
            names = {label.strip() for label in labels.split(",")}
            assert kind in ("by", "on") and "cluster" in names, (rule["alert"], kind, labels)
        # An aggregation operator without a by clause would drop every label.
        for op in re.finditer(r"\b(sum|max|min|avg|count|topk|bottomk|quantile)\s*(\(|by)", expr):
            assert op.group(2) == "by" or re.match(r"\s*by", expr[op.end():]), (rule["alert"], op.group(0))


def test_alertmanager_groups_by_cluster():
    config = yaml.safe_load(AM_CONFIG.read_text())
    routes = [config["route"], *config["route"].get("routes", [])]
    grouped = [r for r in routes if "group_by" in r]
    assert grouped
    for route in grouped:
        assert "cluster" in route["group_by"] and "remediation" in route["group_by"], route
