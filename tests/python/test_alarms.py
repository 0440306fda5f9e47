"""The failed/escalated alarm watches exactly the metric the functions emit (shared/src/report/mod.rs EMF)."""
import re

import cfn

REPORT_RS = cfn.TEMPLATE.parent / "shared" / "src" / "report" / "mod.rs"


def test_alarm_covers_every_function_and_both_bad_outcomes_of_the_emitted_metric():
    namespace = re.search(r'METRIC_NAMESPACE: &str = "([^"]+)"', REPORT_RS.read_text()).group(1)
    alarm = cfn.load_template()["Resources"]["RemediationFailuresAlarm"]["Properties"]
    watched = set()
    for metric in alarm["Metrics"]:
        if "MetricStat" in metric:
            stat = metric["MetricStat"]["Metric"]
            assert stat["Namespace"] == namespace and stat["MetricName"] == "Remediations"
            dims = {d["Name"]: d["Value"] for d in stat["Dimensions"]}
            watched.add((dims["Function"], dims["Outcome"]))
            assert metric["Id"] in alarm["Metrics"][0]["Expression"]
    functions = ["latency-restart", "error-rollback", "db-circuit-break", "region-failover"]
    assert watched == {(f, o) for f in functions for o in ("failed", "escalated")}
    assert alarm["Threshold"] == 0 and alarm["ComparisonOperator"] == "GreaterThanThreshold"
