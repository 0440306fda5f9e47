"""The whole flow on real components, locally.

    synthetic Istio metrics -> Prometheus (Debian, the project's rules)
      -> Alertmanager (Debian, the project's config and SNS template)
      -> SNS (moto server) alert topic -> one SQS-backed subscription per function with the
         filter policy from template.yaml (moto cannot invoke Lambda without Docker, so a
         small poller does what the Lambda SNS subscription does: wraps each delivery in a
         Lambda SNS event and invokes the function)
      -> each function's release bootstrap under the AWS Lambda Runtime Interface Emulator,
         configured from template.yaml's environment
      -> a real Kubernetes control plane (scripts/test-cluster) with the demo mesh applied,
         each function with its group's token
      -> reports to the notification topic (moto)

Used by tests/python/test_end_to_end.py and by scripts/demo (the README's main command).
The shipped rules are used as they are except that `for:` and rate windows are shortened
(2m -> 2s, 5m -> 10s) so the flow takes seconds instead of minutes.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import yaml

import am_harness
import kube_cluster
from am_harness import stop_process, wait_http
import cfn

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "remediation-rules.yml"
FUNCTIONS = ["latency-restart", "error-rollback", "db-circuit-break", "region-failover"]
LOGICAL_IDS = {
    "latency-restart": "LatencyRestartFunction",
    "error-rollback": "ErrorRollbackFunction",
    "db-circuit-break": "DbCircuitBreakFunction",
    "region-failover": "RegionFailoverFunction",
}
REGION = "us-east-1"


def free_port() -> int:
    return am_harness.free_port()


class _QuietHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # Without TCP_NODELAY each keep-alive reply can stall ~40 ms (Nagle + delayed ACK).
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        pass

    def reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class MeshMetrics:
    """A /metrics endpoint with the series the rules read, for the demo mesh in `shop`.

    Counters grow at rates set by the scenario: `bad` (checkout-v2 slow and failing, orders'
    database timing out, us-east-1 unreachable) or `good`.
    """

    def __init__(self) -> None:
        self.bad = False
        self._lock = threading.Lock()
        self._values: dict[str, float] = {}
        self._rates: dict[str, float] = {}
        self._last = time.monotonic()
        self.probe_bad = False
        self._overrides: dict[str, float] = {}
        self._set_rates()
        outer = self

        class Handler(_QuietHandler):
            def do_GET(self) -> None:  # noqa: N802
                if self.path.startswith("/metrics"):
                    self.reply(200, outer.render().encode(), "text/plain; version=0.0.4")
                elif self.path.startswith("/health/"):
                    self.reply(200, b"ok")
                else:
                    self.reply(404, b"not found")

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def health_url(self, region: str) -> str:
        return f"http://{self.address}/health/{region}"

    def set_bad(self, bad: bool) -> None:
        with self._lock:
            self._advance()
            self.bad = bad
            self._set_rates()

    def override(self, rates: dict[str, float]) -> None:
        """Sets these series' rates (new series included), whatever `bad` says, from now on."""
        with self._lock:
            self._advance()
            self._overrides.update(rates)
            self._set_rates()

    def _set_rates(self) -> None:
        bad = self.bad
        checkout = 'destination_service_name="checkout",destination_service_namespace="shop",destination_workload_namespace="shop",reporter="destination"'
        rates: dict[str, float] = {}
        for version, slow, failing in [("v1", False, False), ("v2", bad, bad)]:
            series = f'{checkout},destination_workload="checkout-{version}",destination_version="{version}"'
            total = 20.0
            for le in ["100", "250", "500", "1000", "2500", "+Inf"]:
                fast_share = 0.0 if slow else 1.0
                in_bucket = total * (fast_share if float(le.replace("+Inf", "inf")) < 1000 else 1.0)
                rates[f'istio_request_duration_milliseconds_bucket{{{series},le="{le}"}}'] = in_bucket
            rates[f"istio_request_duration_milliseconds_count{{{series}}}"] = total
            errors = 2.0 if failing else 0.0
            rates[f'istio_requests_total{{{series},response_code="200"}}'] = total - errors
            rates[f'istio_requests_total{{{series},response_code="500"}}'] = errors
        rates['db_client_requests_total{namespace="shop",app="orders",db="orders-db"}'] = 10.0
        rates['db_client_timeouts_total{namespace="shop",app="orders",db="orders-db"}'] = 2.0 if bad else 0.0
        rates.update(self._overrides)
        self._rates = rates

    def _advance(self) -> None:
        now = time.monotonic()
        dt = now - self._last
        self._last = now
        for name, rate in self._rates.items():
            self._values[name] = self._values.get(name, 0.0) + rate * dt

    def render(self) -> str:
        with self._lock:
            self._advance()
            lines = [f"{name} {value:.3f}" for name, value in sorted(self._values.items())]
            for region in ["us-east-1", "us-west-2", "eu-west-1"]:
                up = 0 if (self.bad and region == "us-east-1") else 1
                lines.append(f'probe_success{{job="mesh-region-probe",region="{region}",namespace="shop",service="frontend"}} {up}')
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class Prometheus:
    """The Debian `prometheus` with the project's rules (timings shortened), scraping `metrics`."""

    def __init__(self, workdir: Path, metrics: MeshMetrics, alertmanager_url: str, port: int | None = None) -> None:
        self.port = port or free_port()
        rules = RULES.read_text()
        rules = re.sub(r"for: 2m", "for: 2s", rules)
        rules = rules.replace("[5m]", "[10s]")
        (workdir / "rules.yml").write_text(rules)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "external_labels": {"cluster": "demo"}},
            "rule_files": [str(workdir / "rules.yml")],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager_url.removeprefix("http://")]}]}]},
            "scrape_configs": [{"job_name": "mesh", "honor_labels": True, "static_configs": [{"targets": [metrics.address]}]}],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        binary = shutil.which("prometheus")
        if not binary:
            raise FileNotFoundError("prometheus (Debian package) not on PATH: run scripts/setup")
        self.log = open(workdir / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--web.external-url=http://prometheus.monitoring:9090"],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_http(f"http://127.0.0.1:{self.port}/-/ready", proc=self.proc)

    def value(self, query: str) -> float | None:
        """The instant value of `query`, if it has one."""
        data = urllib.parse.urlencode({"query": query}).encode()
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v1/query", data=data, timeout=5) as r:
            result = json.load(r)["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def alerts(self) -> list[dict]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v1/alerts", timeout=5) as r:
            return json.load(r)["data"]["alerts"]

    def close(self) -> None:
        stop_process(self.proc)
        self.log.close()


def rie_path() -> Path:
    found = list((REPO / ".venv" / "lib").glob("python3*/site-packages/samcli/local/rapid/aws-lambda-rie-x86_64"))
    if not found:
        raise FileNotFoundError("Lambda Runtime Interface Emulator missing: run scripts/setup")
    return found[0]


def template_environment(function: str) -> dict[str, str]:
    """The function's environment as template.yaml sets it, parameters at their defaults."""
    template = cfn.load_template()
    params = template.get("Parameters", {})
    variables = dict(template["Globals"]["Function"]["Environment"]["Variables"])
    props = template["Resources"][LOGICAL_IDS[function]]["Properties"]
    variables.update(props.get("Environment", {}).get("Variables", {}))
    env = {}
    for name, value in variables.items():
        if isinstance(value, dict) and "If" in value:
            continue  # a resource while its condition holds (the verify queue): the flow sets it
        if isinstance(value, dict) and "Ref" in value:
            ref = value["Ref"]
            if ref not in params:
                continue  # a resource (topic ARN): replaced by the emulator's
            value = params[ref].get("Default", "")
        env[name] = str(value)
    return env


def filter_policy(function: str) -> dict:
    props = cfn.load_template()["Resources"][LOGICAL_IDS[function]]["Properties"]
    for event in props.get("Events", {}).values():
        if event.get("Type") == "SNS":
            return event["Properties"]["FilterPolicy"]
    raise KeyError(f"{function} has no SNS event in template.yaml")


@dataclass
class Invocation:
    function: str
    message_id: str
    published: float  # SNS Timestamp (epoch seconds)
    received: float  # delivery picked up
    started: float
    finished: float
    response: dict


class LambdaFunction:
    """A release bootstrap under the Runtime Interface Emulator."""

    def __init__(self, function: str, env: dict[str, str], workdir: Path) -> None:
        self.function = function
        self.port = free_port()
        bootstrap = REPO / "target" / "release" / function
        if not bootstrap.exists():
            raise FileNotFoundError(f"{bootstrap} missing: cargo build --release -p {function}")
        full_env = {"PATH": os.environ.get("PATH", ""), "AWS_LAMBDA_FUNCTION_NAME": function,
                    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128", "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
                    "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{function}", "AWS_LAMBDA_LOG_STREAM_NAME": "local"}
        full_env.update(env)
        self.log_path = workdir / f"{function}.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [str(rie_path()), "--runtime-interface-emulator-address", f"127.0.0.1:{self.port}",
             "--runtime-api-address", f"127.0.0.1:{free_port()}", str(bootstrap)],
            env=full_env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"emulator for {function} did not listen")
            time.sleep(0.02)

    def invoke(self, event: dict) -> dict:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/2015-03-31/functions/function/invocations",
            data=json.dumps(event).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as r:
            return json.load(r)

    def close(self) -> None:
        stop_process(self.proc)
        self.log.close()


def parse_time(stamp: str) -> float:
    """RFC 3339 with any number of fractional digits (Go prints up to nine)."""
    from datetime import datetime, timezone
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", stamp)
    if not match:
        raise ValueError(f"not an RFC 3339 time: {stamp}")
    base, fraction, zone = match.groups()
    parsed = datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone))
    return parsed.replace(tzinfo=parsed.tzinfo or timezone.utc).timestamp() + float(f"0.{fraction or 0}")


@dataclass
class Flow:
    """Everything started for one run; `close()` stops it all."""

    dry_run: bool
    functions: list[str]
    # Set on top of the template's environment for every function (e.g. budgets off).
    env: dict[str, str] = field(default_factory=dict)
    # Set on top of that for one function.
    function_env: dict[str, dict[str, str]] = field(default_factory=dict)
    # Verify applied changes: a verify queue per function (moto SQS) and PROMETHEUS_URL set;
    # the queued requests wait until `deliver_verifications`.
    verify: bool = False
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="e2e-")))
    invocations: list[Invocation] = field(default_factory=list)
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def start(self) -> "Flow":
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        w = self.workdir
        # The Kubernetes API with the demo mesh: the real control plane.
        self.kube = kube_cluster.RealCluster(w, self.stack)

        # AWS emulator: the alert topic, the per-function subscriptions, the report topic.
        self.moto_port = free_port()
        self.moto_log = open(w / "moto.log", "wb")
        self.moto = subprocess.Popen([str(REPO / ".venv/bin/moto_server"), "-H", "127.0.0.1", "-p", str(self.moto_port)],
                                     stdout=self.moto_log, stderr=subprocess.STDOUT)
        self.stack.callback(stop_process, self.moto)
        self.moto_url = f"http://127.0.0.1:{self.moto_port}"
        wait_http(f"{self.moto_url}/moto-api/", proc=self.moto)
        aws = {"endpoint_url": self.moto_url, "region_name": REGION,
               "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        self.sns = boto3.client("sns", **aws)
        self.sqs = boto3.client("sqs", **aws)
        self.alert_topic = self.sns.create_topic(Name="mesh-remediation-alerts")["TopicArn"]
        assert self.alert_topic == am_harness.ALERT_TOPIC_ARN
        self.report_topic = self.sns.create_topic(Name="mesh-remediation-notifications")["TopicArn"]
        self.report_queue = self._queue("reports", self.report_topic, None)
        self.queues = {f: self._queue(f, self.alert_topic, filter_policy(f)) for f in self.functions}

        # Region health endpoints for region-failover (us-east-1 is the degraded one).
        self.metrics = MeshMetrics()
        self.stack.callback(self.metrics.close)

        self.prometheus_port = free_port()
        self.verify_queues = {f: self.sqs.create_queue(QueueName=f"{f}-verify")["QueueUrl"]
                              for f in self.functions} if self.verify else {}

        # The functions, configured from template.yaml.
        self.lambdas: dict[str, LambdaFunction] = {}
        for function in self.functions:
            env = template_environment(function)
            env.pop("CLUSTER_NAMES", None)  # local: kubeconfig instead of EKS
            env.update({
                "KUBECONFIG": self.kube.kubeconfig(function), "DRY_RUN": "true" if self.dry_run else "false",
                "NOTIFY_TOPIC_ARN": self.report_topic, "ALERT_TOPIC_ARN": self.alert_topic,
                "AWS_ENDPOINT_URL": self.moto_url, "AWS_REGION": REGION,
                "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "REGION_HEALTH_URLS": ",".join(f"{r}={self.metrics.health_url(r)}" for r in ["us-west-2", "eu-west-1"]),
            })
            if self.verify:
                env.update({"PROMETHEUS_URL": f"http://127.0.0.1:{self.prometheus_port}",
                            "VERIFY_QUEUE_URL": self.verify_queues[function], "VERIFY_AFTER_SECONDS": "1"})
            env.update(self.env)
            env.update(self.function_env.get(function, {}))
            fn = LambdaFunction(function, env, w)
            self.stack.callback(fn.close)
            self.lambdas[function] = fn

        # Alertmanager (project config + template, repeat every few seconds) and Prometheus.
        config = am_harness.example_config(self.moto_url + "/", group_wait="1s", group_interval="2s")
        for route in config["route"].get("routes", []):
            if route.get("receiver") == am_harness.SNS_RECEIVER:
                route["repeat_interval"] = "4s"
        for receiver in config["receivers"]:
            for sns in receiver.get("sns_configs", []):
                sns["sigv4"] = {"region": REGION, "access_key": "testing", "secret_key": "testing"}
        self.alertmanager = am_harness.Alertmanager(config)
        self.alertmanager.__enter__()
        self.stack.callback(self.alertmanager.__exit__, None, None, None)
        self.prometheus = Prometheus(w, self.metrics, self.alertmanager.url, self.prometheus_port)
        self.stack.callback(self.prometheus.close)

        self._stop = threading.Event()
        self._pollers = [threading.Thread(target=self._poll, args=(f,), daemon=True) for f in self.functions]
        for t in self._pollers:
            t.start()

    def _queue(self, name: str, topic: str, policy: dict | None) -> str:
        url = self.sqs.create_queue(QueueName=name)["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        attributes = {"FilterPolicy": json.dumps(policy), "FilterPolicyScope": "MessageAttributes"} if policy else {}
        self.sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn, Attributes=attributes)
        return url

    def _poll(self, function: str) -> None:
        """What the Lambda SNS subscription does: one invocation per delivery."""
        queue = self.queues[function]
        while not self._stop.is_set():
            got = self.sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1)
            for message in got.get("Messages", []):
                received = time.time()
                envelope = json.loads(message["Body"])
                event = {"Records": [{"EventSource": "aws:sns", "EventVersion": "1.0",
                                      "EventSubscriptionArn": f"{self.alert_topic}:{function}", "Sns": envelope}]}
                started = time.time()
                response = self.lambdas[function].invoke(event)
                finished = time.time()
                self.invocations.append(Invocation(function, envelope["MessageId"], parse_time(envelope["Timestamp"]),
                                                   received, started, finished, response))
                self.sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])

    def deliver_verifications(self, function: str, timeout: float = 30) -> list[tuple[dict, dict]]:
        """What the verify queue's event source mapping does: each queued verify request, as
        Lambda's SQS event, invokes the function. Returns each event with the function's answer."""
        queue = self.verify_queues[function]
        deadline = time.monotonic() + timeout
        while True:
            got = self.sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1)
            messages = got.get("Messages", [])
            if messages or time.monotonic() > deadline:
                break
        events = []
        for m in messages:
            event = {"Records": [{"messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
                                  "attributes": {}, "messageAttributes": {}, "md5OfBody": m["MD5OfBody"],
                                  "eventSource": "aws:sqs", "eventSourceARN": f"arn:aws:sqs:{REGION}:123456789012:{function}-verify",
                                  "awsRegion": REGION}]}
            response = self.invoke(function, event)
            self.sqs.delete_message(QueueUrl=queue, ReceiptHandle=m["ReceiptHandle"])
            events.append((event, response))
        return events

    def invoke(self, function: str, event: dict) -> dict:
        """Invokes `function` directly with `event`, recorded like a delivery."""
        started = time.time()
        response = self.lambdas[function].invoke(event)
        self.invocations.append(Invocation(function, "direct", started, started, started, time.time(), response))
        return response

    # ------------------------------------------------------------------ observation
    def objects(self) -> list[dict]:
        return self.kube.objects()

    def object(self, kind: str, name: str, namespace: str = "shop") -> dict:
        for o in self.objects():
            if o.get("kind") == kind and o["metadata"]["name"] == name and o["metadata"].get("namespace") == namespace:
                return o
        raise KeyError(f"{kind} {namespace}/{name}")

    def reports(self) -> list[dict]:
        out = []
        while True:
            got = self.sqs.receive_message(QueueUrl=self.report_queue, MaxNumberOfMessages=10, MessageAttributeNames=["All"])
            messages = got.get("Messages", [])
            if not messages:
                return out
            for m in messages:
                envelope = json.loads(m["Body"])
                out.append({"report": json.loads(envelope["Message"]), "attributes": envelope.get("MessageAttributes", {})})
                self.sqs.delete_message(QueueUrl=self.report_queue, ReceiptHandle=m["ReceiptHandle"])

    def outcomes(self, function: str | None = None) -> list[tuple[str, dict]]:
        return [(i.function, o) for i in self.invocations if function in (None, i.function)
                for o in i.response.get("outcomes", [])]

    def wait_until(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}; invocations: {self.summary()}")
            time.sleep(0.2)

    def summary(self) -> str:
        return json.dumps([(i.function, [(o.get("outcome"), o.get("reason")) for o in i.response.get("outcomes", [])])
                           for i in self.invocations])

    def close(self) -> None:
        # Stop the pollers before the emulators they talk to.
        if hasattr(self, "_stop"):
            self._stop.set()
            for t in self._pollers:
                t.join(timeout=10)
        self.stack.close()
        if getattr(self, "moto_log", None):
            self.moto_log.close()


# ---------------------------------------------------------------------- verification
CHECKS_RS = REPO / "shared" / "src" / "verify" / "checks.rs"
SHOP_DESTINATION = 'destination_service_namespace="shop",destination_workload_namespace="shop",reporter="destination"'


def default_checks() -> dict[str, list[dict]]:
    """Each function's default verification checks as checks.rs defines them, with their rate
    windows shortened as the flow shortens the rules' (5m -> 10s)."""
    source = CHECKS_RS.read_text()
    queries = dict(re.findall(r'const (\w+): &str = r#"(.*?)"#;', source, re.S))
    body = source[source.index("pub fn defaults"):source.index("pub fn parse_override")]
    parts = re.split(r'\n\s+"([a-z-]+)" =>', body)
    arms = dict(zip(parts[1::2], parts[2::2]))
    out: dict[str, list[dict]] = {}
    for function in FUNCTIONS:
        out[function] = [
            {"name": name, "query": queries[const].replace("[5m]", "[10s]").replace("[1m]", "[10s]"),
             "threshold": float(threshold), "requires": re.findall(r'"(\w+)"', requires)}
            for name, const, threshold, requires in re.findall(r'check\(\s*"(\w+)",\s*(\w+),\s*([0-9.]+),\s*&\[([^\]]*)\]', arms[function])
        ]
        assert out[function], function
    return out


def verification_env() -> dict[str, dict[str, str]]:
    """`function_env` that gives each function its default checks, windows shortened."""
    return {f: {"VERIFY_CHECKS": json.dumps(checks)} for f, checks in default_checks().items()}


def serving_rates(service: str, workload: str, version: str, ok: float, failed: float, fast: bool) -> dict[str, float]:
    """Request and latency-bucket rates of one workload version (fast: every request under 100 ms,
    else every one between 500 ms and 1 s)."""
    series = f'destination_service_name="{service}",{SHOP_DESTINATION},destination_workload="{workload}",destination_version="{version}"'
    total = ok + failed
    out = {f'istio_requests_total{{{series},response_code="200"}}': ok,
           f'istio_requests_total{{{series},response_code="500"}}': failed}
    for le in ["100", "250", "500", "1000", "2500", "+Inf"]:
        out[f'istio_request_duration_milliseconds_bucket{{{series},le="{le}"}}'] = total if (fast or le in ("1000", "2500", "+Inf")) else 0.0
    return out


# frontend (region-failover's service) serves with 10 % errors, before and after its drain, at
# half a request per second: below the rules' 1 request/s, so no other function's alert fires.
FRONTEND_ERRORING = serving_rates("frontend", "frontend", "v1", 0.45, 0.05, True)
# What the four changes lead to: checkout-v2 fast after its restart, orders' database calls no
# longer timing out behind the breaker, and the stable checkout-v1 failing half its requests
# once it carries the traffic.
AFTER_THE_CHANGES = {
    **serving_rates("checkout", "checkout-v2", "v2", 18.0, 2.0, True),
    **serving_rates("checkout", "checkout-v1", "v1", 10.0, 10.0, True),
    'db_client_timeouts_total{namespace="shop",app="orders",db="orders-db"}': 0.0,
}


def wait_for_the_changes_to_show(flow: Flow) -> None:
    """Until Prometheus' 10 s windows hold only samples taken after AFTER_THE_CHANGES."""
    p95_v2 = 'histogram_quantile(0.95, sum by (le) (rate(istio_request_duration_milliseconds_bucket{destination_workload="checkout-v2"}[10s])))'
    v1_errors = ('sum(rate(istio_requests_total{destination_version="v1",response_code="500"}[10s]))'
                 ' / sum(rate(istio_requests_total{destination_version="v1"}[10s]))')
    timeouts = "sum(rate(db_client_timeouts_total[10s]))"
    flow.wait_until(lambda: ((flow.prometheus.value(p95_v2) or 1e9) <= 100
                             and (flow.prometheus.value(v1_errors) or 0) >= 0.49
                             and flow.prometheus.value(timeouts) == 0), 60, "the metrics after the changes")


# ---------------------------------------------------------------------- presentation
def mesh_view(flow: Flow) -> list[str]:
    lines = []
    for o in sorted(flow.objects(), key=lambda o: (o.get("kind", ""), o["metadata"]["name"])):
        if o["metadata"].get("namespace") != "shop":
            continue
        name = o["metadata"]["name"]
        if o["kind"] == "Deployment":
            restarted = o["spec"]["template"].get("metadata", {}).get("annotations", {}).get("kubectl.kubernetes.io/restartedAt", "-")
            lines.append(f"  Deployment      {name:<13} generation {o['metadata'].get('generation')}  restartedAt {restarted}")
        elif o["kind"] == "VirtualService":
            weights = " ".join(f"{r['destination'].get('subset') or r['destination']['host']}={r.get('weight', 100)}"
                               for h in o["spec"].get("http", []) for r in h.get("route", []))
            lines.append(f"  VirtualService  {name:<13} {weights}")
        elif o["kind"] == "DestinationRule":
            policy = o["spec"].get("trafficPolicy", {})
            parts = [k for k in ("outlierDetection", "connectionPool") if k in policy]
            failover = policy.get("loadBalancer", {}).get("localityLbSetting", {}).get("failover")
            if failover:
                parts.append(f"failover {failover}")
            lines.append(f"  DestinationRule {name:<13} {', '.join(parts) or 'no circuit breaking'}")
    return lines


def timing_view(flow: Flow, fired: dict[str, float]) -> list[str]:
    lines = [f"  {'function':<17} {'fired->SNS':>11} {'SNS->Lambda':>12} {'Lambda':>8} {'total':>8}"]
    for function in flow.functions:
        first = next((i for i in flow.invocations if i.function == function
                      and any(o.get("outcome") in ("applied", "dry-run") for o in i.response.get("outcomes", []))), None)
        if not first or function not in fired:
            continue
        lines.append(f"  {function:<17} {first.published - fired[function]:>10.2f}s {first.started - first.published:>11.2f}s "
                     f"{(first.finished - first.started) * 1000:>6.0f}ms {first.finished - fired[function]:>7.2f}s")
    return lines


def fired_times(flow: Flow) -> dict[str, float]:
    """When each remediation's alert became `firing` in Prometheus (activeAt + for)."""
    out = {}
    for alert in flow.prometheus.alerts():
        if alert.get("state") == "firing":
            out.setdefault(alert["labels"].get("remediation"), parse_time(alert["activeAt"]) + 2.0)
    return out
