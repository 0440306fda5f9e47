"""The shipped SNS message template, proven with the real Alertmanager.

Starts prometheus-alertmanager (0.25 on Debian bookworm) with deploy/alertmanager/alertmanager.yml
and sns.tmpl, points its sns_configs at a local SNS stand-in, posts hostile alerts through the
v2 API and checks every Publish call: accepted, webhook-v4 JSON, labels round-trip (modulo the
replacements and caps documented in sns.tmpl), short ASCII subject, non-empty attributes, size.
Each captured message is then fed, as a Lambda SNS event, to the project's intake checker.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import unicodedata
from datetime import datetime, timezone

import pytest

from am_harness import (
    AM_CONFIG,
    REPO,
    SNS_MAX_BYTES,
    SNS_RECEIVER,
    Alertmanager,
    SnsCapture,
    example_config,
    lambda_sns_event,
)

pytestmark = pytest.mark.skipif(
    not (shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")),
    reason="needs the prometheus-alertmanager package",
)

LABEL_CAP = 1024
ANNOTATION_CAP = 4096
MAX_ALERTS = 200
TOP_KEYS = {
    "version", "groupKey", "truncatedAlerts", "status", "receiver", "groupLabels",
    "commonLabels", "commonAnnotations", "externalURL", "alerts",
}
ALERT_KEYS = {"status", "labels", "annotations", "startsAt", "endsAt", "generatorURL", "fingerprint"}
FUNCTIONS = {"latency-restart", "error-rollback", "db-circuit-break", "region-failover"}
# sns.tmpl: each label / annotation map renders to at most this many bytes of JSON, braces included.
MAP_CAP = 32 * 1024
GROUP_BY = ("cluster", "remediation", "namespace", "alertname")

# Every ASCII control character, quotes, backslashes, and Unicode that Go's %q escapes in ways
# JSON does not accept (\x7f, \U000e0001, lone surrogates -> invalid UTF-8) or accepts (\u0085).
CONTROLS = "".join(chr(c) for c in range(0x20)) + "\x7f"
HOSTILE = (
    'q"uo"te \\back\\slash\\ {"json":"inject"} </script> %q %s $1 {{ .Status }}\n'
    f"controls:{CONTROLS}|"
    "tab\tnewline\ncr\r"
    "emoji:\U0001F525\U0001F680\U0001F469\u200d\U0001F4BB "
    "rtl:\u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627 \u202eevil\u202c \u200f "
    "cjk:\u4f60\u597d combining:e\u0301 nel:\u0085 ls:\u2028 ps:\u2029 bom:\ufeff "
    "astral-nonprint:\U000e0001\U000e0041 private:\U000f0000 nonchar:\U0010ffff "
    "lone-surrogate:\ud800 replacement:\ufffd end"
)


def am_stored(value: str) -> str:
    """What Alertmanager holds after decoding our JSON (lone surrogates become U+FFFD)."""
    return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in value)


def go_cut(value: str, limit: int) -> str:
    """sns.tmpl's cap: first ``limit`` bytes, split character -> one U+FFFD per byte, then '…'."""
    raw = value.encode()
    if len(raw) <= limit:
        return value
    raw = raw[:limit]
    for stray in range(4):
        try:
            return raw[: len(raw) - stray].decode() + "\ufffd" * stray + "\u2026"
        except UnicodeDecodeError:
            continue
    raise AssertionError("unreachable")


def sanitized(value: str) -> str:
    """sns.tmpl's replacement of characters Go's %q would not escape as valid JSON."""
    out = []
    for c in value:
        o = ord(c)
        if (o < 0x20 and c not in "\t\n\r") or o == 0x7F or (o > 0xFFFF and unicodedata.category(c)[0] in "CZ"):
            out.append("\ufffd")
        else:
            out.append(c)
    return "".join(out)


def expected_map(pairs: dict[str, str], cap: int) -> dict[str, str]:
    return {sanitized(go_cut(k, LABEL_CAP)): sanitized(go_cut(am_stored(v), cap)) for k, v in pairs.items()}


def contract_labels(alertname: str, **extra: str) -> dict[str, str]:
    labels = {
        "alertname": alertname,
        "remediation": "latency-restart",
        "namespace": "shop",
        "deployment": "checkout-v2",
        "service": "checkout",
        "severity": "critical",
        "cluster": "demo",
        "auto_remediation": "active",
    }
    labels.update(extra)
    return labels


def alert(labels: dict[str, str], annotations: dict[str, str] | None = None, **fields: str) -> dict:
    return {
        "labels": labels,
        "annotations": annotations or {},
        "generatorURL": "http://prometheus.monitoring:9090/graph?g0.expr=up&g0.tab=1",
        **fields,
    }


def rendered_map(pairs: dict[str, str]) -> str:
    """A map as sns.tmpl renders it, for ASCII without control characters (JSON == Go's %q)."""
    return json.dumps(dict(sorted(pairs.items())), separators=(",", ":"), ensure_ascii=False)


def map_of_size(pairs: dict[str, str], key: str, target: int | None, fill: str, value_cap: int = ANNOTATION_CAP) -> dict:
    """``pairs`` plus ``key`` whose value of ``fill`` characters makes the rendered map exactly
    ``target`` bytes; with no target, a value of ``value_cap`` quotes (8 KiB once escaped)."""
    out = dict(pairs)
    if target is None:
        out[key] = fill * value_cap
        assert len(rendered_map(out).encode()) > MAP_CAP
        return out
    out[key] = ""
    out[key] = fill * (target - len(rendered_map(out).encode()))
    assert len(rendered_map(out).encode()) == target and len(out[key]) <= value_cap
    return out


def build_groups() -> dict[str, list[dict]]:
    """One Alertmanager group (distinct alertname) per scenario."""
    groups: dict[str, list[dict]] = {}
    # Hostile group label (alertname) and hostile extra labels and annotations.
    groups[HOSTILE] = [
        alert(
            contract_labels(HOSTILE, idx=str(i), payload=HOSTILE[i:] + str(i)),
            {"description": HOSTILE * (i + 1), "summary": f"hostile {i}", "runbook_url": "https://x/?a=1&b=<2>"},
        )
        for i in range(4)
    ]
    # Very long names and values: 100 KB (ASCII and 3-byte characters, so a cut splits one).
    groups["LongValues"] = [
        alert(
            contract_labels("LongValues", idx="0", long_ascii="x" * 100_000, long_euro="\u20ac" * 35_000,
                            **{"n" * 2000: "long name"}),
            {"description": "\u20ac" * 35_000, "huge": '"\\' * 50_000},
        )
    ]
    # 1000 alerts in one group: the first 200 are rendered, the rest counted.
    groups["ManyAlerts"] = [
        alert(contract_labels("ManyAlerts", idx=str(i), pod=f"checkout-v2-{i:04d}"), {"summary": f"pod {i}"})
        for i in range(1000)
    ]
    # 300 alerts of ~24 KB rendered each: the 250,000 byte budget binds before the count cap.
    groups["BudgetBound"] = [
        alert(contract_labels("BudgetBound", idx=str(i)), {f"a{j}": '"' * 4000 for j in range(3)})
        for i in range(300)
    ]
    # The map cap at its boundary (ASCII only, so JSON's size is Go's %q size): an annotation map
    # of exactly 32 KiB; one byte more (the last pair left out, and the small pair after it); a
    # map just under the cap followed by a pair of 4 KiB that %q doubles (which once overshot it
    # by one pair); a label map of exactly 32 KiB and one byte more.
    for name, target, last in [("MapCapExact", MAP_CAP, "x"), ("MapCapOneOver", MAP_CAP + 1, "x"),
                               ("MapCapLongPair", None, '"')]:
        annotations = map_of_size({f"a{j:02d}": "x" * 3600 for j in range(8)}, "a08", target, last)
        if target != MAP_CAP:
            annotations["zz"] = "after"
        groups[name] = [alert(contract_labels(name, idx="0"), annotations)]
    for name, target in [("LabelMapCapExact", MAP_CAP), ("LabelMapCapOneOver", MAP_CAP + 1)]:
        labels = contract_labels(name, idx="0")
        labels.update({f"zz_pad_{j:02d}": "y" * 1000 for j in range(32)})
        labels = map_of_size(labels, "zz_pad_32", target, "y", value_cap=LABEL_CAP)
        if target != MAP_CAP:
            labels["zz_pad_33"] = "after"
        groups[name] = [alert(labels)]
    # Routing attribute fallbacks.
    groups["BadRemediation"] = [
        alert(contract_labels("BadRemediation", idx="0", remediation="Latency Restart\x00" + "x" * 5000,
                              severity="s\nv" * 100))
    ]
    no_rem = contract_labels("NoRemediation", idx="0")
    del no_rem["remediation"], no_rem["severity"]
    groups["NoRemediation"] = [alert(no_rem)]
    # Fired, then (second round) partly or wholly resolved.
    groups["ResolveAll"] = [alert(contract_labels("ResolveAll", idx=str(i))) for i in range(2)]
    groups["ResolveSome"] = [alert(contract_labels("ResolveSome", idx=str(i))) for i in range(5)]
    return groups


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.fixture(scope="module")
def capture():
    """Run every scenario through one Alertmanager; returns (groups, publishes by alertname, am metrics)."""
    groups = build_groups()
    with SnsCapture() as sns, Alertmanager(example_config(sns.url)) as am:
        started = time.monotonic()
        for alerts in groups.values():
            am.post_alerts(alerts)
        sns.wait_for(len(groups), timeout=60)
        # Second round: resolve all of ResolveAll and two of ResolveSome.
        ends = now_rfc3339()
        resolved = [dict(a, endsAt=ends) for a in groups["ResolveAll"]]
        resolved += [dict(a, endsAt=ends) for a in groups["ResolveSome"][:2]]
        am.post_alerts(resolved)
        publishes = sns.wait_for(len(groups) + 2, timeout=60, settle=1.5)
        elapsed = time.monotonic() - started
        failed = am.metric("alertmanager_notifications_failed_total", integration="sns")
        sent = am.metric("alertmanager_notifications_total", integration="sns")
        log = am.log()
    by_name: dict[str, list[dict]] = {}
    for p in publishes:
        try:
            name = json.loads(p["form"]["Message"])["groupLabels"].get("alertname", "")
        except (ValueError, KeyError, AttributeError):
            name = None  # not webhook JSON: the tests below say why
        by_name.setdefault(name, []).append(p)
    return {
        "groups": groups,
        "publishes": publishes,
        "by_name": by_name,
        "failed": failed,
        "sent": sent,
        "log": log,
        "elapsed": elapsed,
    }


def messages(capture) -> list[tuple[dict, dict]]:
    return [(p, json.loads(p["form"]["Message"])) for p in capture["publishes"]]


def test_example_config_passes_amtool():
    out = subprocess.run(["amtool", "check-config", str(AM_CONFIG)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 templates" in out.stdout


def test_every_publish_was_accepted(capture):
    publishes = capture["publishes"]
    assert len(publishes) == len(capture["groups"]) + 2, [p["form"].get("Subject") for p in publishes]
    for p in publishes:
        assert p["status"] == 200, (p["problems"], p["form"].get("Subject"))
        assert "truncated" not in p["attributes"]  # Alertmanager never had to cut the message
    assert capture["failed"] == 0, capture["log"][-4000:]
    assert capture["sent"] == len(publishes)


def test_message_is_webhook_v4_json_under_the_sns_limit(capture):
    for p, m in messages(capture):
        raw = p["form"]["Message"]
        assert len(raw.encode()) < SNS_MAX_BYTES
        assert len(raw.encode()) <= 250_100  # the template's own budget
        json.loads(raw, strict=True)  # no raw control characters inside strings
        assert set(m) == TOP_KEYS
        assert m["version"] == "4"
        assert m["status"] in ("firing", "resolved")
        assert m["receiver"] == SNS_RECEIVER
        assert m["externalURL"] == "http://alertmanager.monitoring:9093"
        assert isinstance(m["truncatedAlerts"], int) and m["truncatedAlerts"] >= 0
        for key in ("groupLabels", "commonLabels", "commonAnnotations"):
            assert isinstance(m[key], dict) and all(isinstance(v, str) for v in m[key].values())
        assert set(m["groupLabels"]) <= set(GROUP_BY)
        assert m["alerts"], "every notification renders at least one alert"
        for a in m["alerts"]:
            assert set(a) == ALERT_KEYS
            assert a["status"] in ("firing", "resolved")
            assert re.fullmatch(r"[0-9a-f]{16}", a["fingerprint"])
            for ts in (a["startsAt"], a["endsAt"]):
                assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", ts), ts
            if a["status"] == "firing":
                assert a["endsAt"] == "0001-01-01T00:00:00Z"
            else:
                assert not a["endsAt"].startswith("0001")


def test_group_key_is_stable_and_formatted_like_alertmanagers(capture):
    (p,) = capture["by_name"]["ManyAlerts"]
    m = json.loads(p["form"]["Message"])
    assert m["groupKey"] == (
        'mesh-remediation:{alertname="ManyAlerts", cluster="demo", namespace="shop", remediation="latency-restart"}'
    )
    keys = {json.loads(q["form"]["Message"])["groupKey"] for q in capture["by_name"]["ResolveSome"]}
    assert len(keys) == 1


def test_labels_and_annotations_round_trip(capture):
    checked = 0
    for name, posted in capture["groups"].items():
        if "MapCap" in name:
            continue  # test_maps_are_capped_at_32_kib_exactly
        by_idx = {a["labels"]["idx"]: a for a in posted}
        for p in capture["by_name"][sanitized(go_cut(am_stored(name), LABEL_CAP))]:
            m = json.loads(p["form"]["Message"])
            for a in m["alerts"]:
                source = by_idx[a["labels"]["idx"]]
                assert a["labels"] == expected_map(source["labels"], LABEL_CAP)
                assert a["annotations"] == expected_map(source["annotations"], ANNOTATION_CAP)
                assert a["generatorURL"] == source["generatorURL"]
                checked += 1
            first = by_idx[m["alerts"][0]["labels"]["idx"]]
            group_labels = {k: first["labels"][k] for k in GROUP_BY if k in first["labels"]}
            assert m["groupLabels"] == expected_map(group_labels, LABEL_CAP)
            common = set.intersection(*(set(by_idx[a["labels"]["idx"]]["labels"].items()) for a in m["alerts"]))
            assert set(m["commonLabels"].items()) <= set(expected_map(dict(common), LABEL_CAP).items())
    assert checked > 220
    # The hostile strings really were hostile, and came through where JSON allows it.
    (p,) = capture["by_name"][sanitized(am_stored(HOSTILE))]
    payload = json.loads(p["form"]["Message"])["alerts"][0]["labels"]["payload"]
    for kept in ('"', "\\", "\n", "\t", "\r", "\U0001F525", "\u05e9", "\u0085", "\u2028", "\u200f", "e\u0301"):
        assert kept in payload
    for gone in ("\x00", "\x01", "\x1b", "\x7f", "\U000e0001", "\U0010ffff", "\ud800"):
        assert gone not in payload


def test_long_values_are_cut_and_marked(capture):
    (p,) = capture["by_name"]["LongValues"]
    (a,) = json.loads(p["form"]["Message"])["alerts"]
    assert a["labels"]["long_ascii"] == "x" * LABEL_CAP + "\u2026"
    assert a["labels"]["long_euro"] == "\u20ac" * 341 + "\ufffd" + "\u2026"  # 1024 = 341 * 3 + 1
    assert a["labels"]["n" * LABEL_CAP + "\u2026"] == "long name"
    assert len(a["annotations"]["huge"].encode()) == ANNOTATION_CAP + 3


def test_maps_are_capped_at_32_kib_exactly(capture):
    """sns.tmpl's documented cap, at its boundary: a map of 32,768 bytes is whole; a pair that
    would make it longer is left out with every pair after it, however long the pair."""

    def rendered(p: dict, field: str, key: str | None = None) -> dict:
        m = json.loads(p["form"]["Message"])
        value = m[field] if key is None else m["alerts"][0][field]
        text = rendered_map(value)
        assert text in p["form"]["Message"], "the map is rendered byte for byte as measured"
        assert len(text.encode()) <= MAP_CAP
        return value

    def source(name: str, field: str) -> dict:
        return capture["groups"][name][0][field]

    (p,) = capture["by_name"]["MapCapExact"]
    for field, key in (("commonAnnotations", None), ("annotations", "alert")):
        value = rendered(p, field, key)
        assert value == source("MapCapExact", "annotations")
        assert len(rendered_map(value).encode()) == MAP_CAP
    for name in ("MapCapOneOver", "MapCapLongPair"):
        (p,) = capture["by_name"][name]
        for field, key in (("commonAnnotations", None), ("annotations", "alert")):
            value = rendered(p, field, key)
            want = {k: v for k, v in source(name, "annotations").items() if k not in ("a08", "zz")}
            assert value == want, sorted(set(source(name, "annotations")) - set(value))
    (p,) = capture["by_name"]["LabelMapCapExact"]
    for field, key in (("commonLabels", None), ("labels", "alert")):
        value = rendered(p, field, key)
        assert value == source("LabelMapCapExact", "labels")
        assert len(rendered_map(value).encode()) == MAP_CAP
    (p,) = capture["by_name"]["LabelMapCapOneOver"]
    for field, key in (("commonLabels", None), ("labels", "alert")):
        value = rendered(p, field, key)
        want = {k: v for k, v in source("LabelMapCapOneOver", "labels").items() if k not in ("zz_pad_32", "zz_pad_33")}
        assert value == want


def test_subject_is_short_ascii(capture):
    for p in capture["publishes"]:
        subject = p["form"]["Subject"]
        assert subject.isascii() and 0 < len(subject) < 100, subject
        assert re.fullmatch(r"\[(FIRING:\d+|RESOLVED)\] [a-z0-9-]+( [A-Za-z0-9_:.-]{1,40})?", subject), subject
    (p,) = capture["by_name"]["ManyAlerts"]
    assert p["form"]["Subject"] == "[FIRING:1000] latency-restart ManyAlerts"


def test_attributes_are_never_empty_and_route_only_valid_names(capture):
    for p, m in messages(capture):
        attrs = p["attributes"]
        assert set(attrs) == {"remediation", "status", "severity"}
        assert all(attrs.values())
        assert attrs["status"] == m["status"]
    expect = {"BadRemediation": ("invalid", "invalid"), "NoRemediation": ("none", "none"), "ManyAlerts": ("latency-restart", "critical")}
    for name, (remediation, severity) in expect.items():
        (p,) = capture["by_name"][name]
        assert (p["attributes"]["remediation"], p["attributes"]["severity"]) == (remediation, severity)


def test_alert_count_and_size_caps_report_what_was_left_out(capture):
    (p,) = capture["by_name"]["ManyAlerts"]
    m = json.loads(p["form"]["Message"])
    assert len(m["alerts"]) == MAX_ALERTS and m["truncatedAlerts"] == 1000 - MAX_ALERTS
    (p,) = capture["by_name"]["BudgetBound"]
    m = json.loads(p["form"]["Message"])
    assert 0 < len(m["alerts"]) < MAX_ALERTS
    assert len(m["alerts"]) + m["truncatedAlerts"] == 300
    for name in ("LongValues", "NoRemediation"):
        (p,) = capture["by_name"][name]
        assert json.loads(p["form"]["Message"])["truncatedAlerts"] == 0


def test_resolved_notifications_and_firing_first(capture):
    first, second = capture["by_name"]["ResolveAll"]
    assert json.loads(first["form"]["Message"])["status"] == "firing"
    m = json.loads(second["form"]["Message"])
    assert m["status"] == "resolved" and second["attributes"]["status"] == "resolved"
    assert second["form"]["Subject"] == "[RESOLVED] latency-restart ResolveAll"
    assert {a["status"] for a in m["alerts"]} == {"resolved"}
    _, mixed = capture["by_name"]["ResolveSome"]
    statuses = [a["status"] for a in json.loads(mixed["form"]["Message"])["alerts"]]
    assert statuses == ["firing"] * 3 + ["resolved"] * 2
    assert mixed["form"]["Subject"] == "[FIRING:3] latency-restart ResolveSome"


def test_intake_check_parses_every_captured_message(capture, tmp_path):
    """Each capture with a real remediation, as a Lambda SNS event, through the functions' intake."""
    cargo = shutil.which("cargo")
    assert cargo, "cargo is needed for the intake check"
    ran = 0
    for i, p in enumerate(capture["publishes"]):
        if p["attributes"]["remediation"] not in FUNCTIONS:
            continue  # SNS delivers these to no function
        event = lambda_sns_event(p, now_rfc3339())
        path = tmp_path / f"capture-{i}.json"
        path.write_text(json.dumps(event, ensure_ascii=False))
        out = subprocess.run(
            [cargo, "run", "-q", "-p", "mesh-remediation-tools", "--bin", "intake-check", "--", str(path)],
            cwd=REPO, capture_output=True, text=True, timeout=1200,
        )
        assert out.returncode == 0, f"{p['form']['Subject']}: {out.stdout[-3000:]}{out.stderr[-3000:]}"
        json.loads(out.stdout)
        ran += 1
    assert ran >= 6


def test_sample_events_are_what_alertmanager_renders_today():
    """events/<function>-{firing,resolved,drill}.json are exactly scripts/render-events.py's output."""
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "render-events.py"), "--check"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
