"""The Grafana dashboard: valid, tagged, and every PromQL expression parses (checked by the
real promtool, by wrapping each expression in a recording rule)."""
import json
import pathlib
import re
import shutil
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy/grafana/mesh-remediation-dashboard.json"


def load():
    return json.loads(DASHBOARD.read_text())


def prometheus_targets(dash):
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            if "expr" in target:
                yield panel["title"], target["expr"]


def test_dashboard_is_tagged_and_covers_golden_signals_and_outcomes():
    dash = load()
    assert "auto_remediation=active" in dash["tags"]
    exprs = " ".join(e for _, e in prometheus_targets(dash))
    for metric in ["istio_request_duration_milliseconds_bucket", "istio_requests_total",
                   "db_client_timeouts_total", "probe_success", "ALERTS"]:
        assert metric in exprs, metric
    metrics = {t.get("metricName") for p in dash["panels"] for t in p.get("targets", [])}
    assert {"Remediations", "ActionLatency"} <= metrics
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def test_every_expression_parses_with_promtool(tmp_path):
    rules = ["groups:", "  - name: dashboard", "    rules:"]
    for i, (title, expr) in enumerate(prometheus_targets(load())):
        concrete = re.sub(r"\$(namespace|cluster)", ".*", expr)
        rules.append(f"      - record: dashboard:expr{i}")
        rules.append(f"        expr: {json.dumps(concrete)}")
    path = tmp_path / "dashboard-rules.yml"
    path.write_text("\n".join(rules) + "\n")
    assert shutil.which("promtool"), "promtool missing: run scripts/setup"
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_selector_follows_the_cluster_variable():
    """One dashboard over several clusters (a ruler or Amazon Managed Prometheus holding them
    all): every series is chosen by the `cluster` variable, and the namespaces offered are the
    chosen clusters' ones."""
    dash = load()
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["cluster"]["query"]["query"] == "label_values(istio_requests_total, cluster)"
    assert variables["cluster"]["allValue"] == ".*", "All also matches series without the label"
    assert 'cluster=~"$cluster"' in variables["namespace"]["query"]["query"]
    for title, expr in prometheus_targets(dash):
        selectors = re.findall(r"\{[^}]*\}", expr)
        assert selectors, title
        for selector in selectors:
            assert 'cluster=~"$cluster"' in selector, f"{title}: {selector}"


def test_the_dashboard_shows_the_annotations_the_functions_post():
    """The functions tag every annotation with `ANNOTATION_TAG` (shared/src/report/grafana.rs);
    the dashboard's annotation query asks Grafana's own store for exactly that tag, and the
    dashboard's uid is the one the README gives for `GrafanaDashboardUid`."""
    source = (ROOT / "shared/src/report/grafana.rs").read_text()
    tag = re.search(r'pub const ANNOTATION_TAG: &str = "([^"]+)";', source).group(1)
    dashboard = load()
    queries = dashboard["annotations"]["list"]
    asking = [
        q
        for q in queries
        if q["datasource"] == {"type": "grafana", "uid": "-- Grafana --"}
        and q["enable"]
        and q["target"]["type"] == "tags"
        and q["target"]["tags"] == [tag]
    ]
    assert len(asking) == 1, queries
    readme = (ROOT / "README.md").read_text()
    assert f"`{dashboard['uid']}` is the shipped one's uid" in readme
