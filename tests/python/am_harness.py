"""Run the real Alertmanager against a local stand-in for the SNS Publish API.

Used by tests/python/test_alertmanager_template.py and scripts/render-events.py.

* ``SnsCapture``: an HTTP listener that accepts the SNS ``Publish`` form Alertmanager's
  ``sns_configs`` send, checks it the way SNS does (subject, attributes, size) and answers
  with a PublishResponse (or SNS's 400 error). It sets TCP_NODELAY on every connection.
* ``Alertmanager``: starts ``prometheus-alertmanager`` on loopback ports with the shipped
  example configuration (deploy/alertmanager/alertmanager.yml), pointed at the listener,
  posts alerts through the v2 API and stops it again.
"""

from __future__ import annotations

import copy
import http.server
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
# ALERTMANAGER_CONFIG / ALERTMANAGER_TEMPLATE: run on other copies of the two files, such as the
# ones scripts/check-deploy extracts from the Amazon Managed Service for Prometheus definition.
AM_CONFIG = Path(os.environ.get("ALERTMANAGER_CONFIG") or REPO / "deploy" / "alertmanager" / "alertmanager.yml")
AM_TEMPLATE = Path(os.environ.get("ALERTMANAGER_TEMPLATE") or REPO / "deploy" / "alertmanager" / "sns.tmpl")
ALERT_TOPIC_ARN = "arn:aws:sns:us-east-1:123456789012:mesh-remediation-alerts"
SNS_RECEIVER = "mesh-remediation"
SNS_MAX_BYTES = 262144


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    """Waits until url answers (any status below 500), or proc exits."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status < 500:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not come up")
        time.sleep(0.1)


def stop_process(proc: subprocess.Popen) -> None:
    """Terminate and reap, so no zombie outlives the run."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def sns_problems(form: dict[str, str], attributes: dict[str, str]) -> list[str]:
    """What real SNS would reject in a Publish call (the checks Alertmanager has tripped)."""
    problems = []
    subject = form.get("Subject")
    if subject is not None:
        if not subject or len(subject) >= 100:
            problems.append("Subject must be less than 100 characters")
        if not subject.isascii() or any(ord(c) < 0x20 or ord(c) == 0x7F for c in subject):
            problems.append("Subject must be ASCII text without line breaks or control characters")
    message = form.get("Message", "")
    if not message:
        problems.append("Empty message")
    size = len(message.encode()) + sum(len(k.encode()) + len(v.encode()) + len("String") for k, v in attributes.items())
    if size > SNS_MAX_BYTES:
        problems.append(f"Message too long: {size} bytes")
    for name, value in attributes.items():
        if not name or not value:
            problems.append(f"Message attribute {name!r} must contain non-empty message attribute value")
    return problems


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def setup(self) -> None:
        super().setup()
        # Without this every keep-alive reply can stall ~40 ms (Nagle + delayed ACK).
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        form = {k: v[0] for k, v in urllib.parse.parse_qs(body.decode(), keep_blank_values=True).items()}
        attributes = {}
        i = 1
        while f"MessageAttributes.entry.{i}.Name" in form:
            attributes[form[f"MessageAttributes.entry.{i}.Name"]] = form.get(
                f"MessageAttributes.entry.{i}.Value.StringValue", ""
            )
            i += 1
        problems = sns_problems(form, attributes) if form.get("Action") == "Publish" else ["not a Publish"]
        message_id = str(uuid.uuid4())
        status = 400 if problems else 200
        if problems:
            reply = (
                '<ErrorResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/"><Error><Type>Sender</Type>'
                f"<Code>InvalidParameter</Code><Message>{'; '.join(problems)}</Message></Error>"
                f"<RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>"
            )
        else:
            reply = (
                '<PublishResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/"><PublishResult>'
                f"<MessageId>{message_id}</MessageId></PublishResult><ResponseMetadata>"
                f"<RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata></PublishResponse>"
            )
        with self.server.lock:
            self.server.publishes.append(
                {
                    "form": form,
                    "attributes": attributes,
                    "status": status,
                    "problems": problems,
                    "message_id": message_id,
                    "raw_bytes": len(body),
                }
            )
        data = reply.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    publishes: list[dict]
    lock: threading.Lock


class SnsCapture:
    """Local SNS Publish endpoint recording every call."""

    def __init__(self) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.publishes = []
        self._server.lock = threading.Lock()
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    @property
    def publishes(self) -> list[dict]:
        with self._server.lock:
            return list(self._server.publishes)

    def __enter__(self) -> "SnsCapture":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def wait_for(self, count: int, timeout: float = 30.0, settle: float = 0.0) -> list[dict]:
        """Wait until at least ``count`` publishes arrived (then ``settle`` more seconds)."""
        deadline = time.monotonic() + timeout
        while len(self.publishes) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"expected {count} SNS publishes, got {len(self.publishes)}")
            time.sleep(0.05)
        if settle:
            time.sleep(settle)
        return self.publishes


def example_config(sns_url: str, group_wait: str = "1s", group_interval: str = "1s") -> dict:
    """The shipped example config, pointed at ``sns_url`` with test timings and dummy keys."""
    config = yaml.safe_load(AM_CONFIG.read_text())
    config = copy.deepcopy(config)
    config["templates"] = [str(AM_TEMPLATE)]
    for route in config["route"].get("routes", []):
        if route.get("receiver") == SNS_RECEIVER:
            route.update(group_wait=group_wait, group_interval=group_interval, repeat_interval="1h")
    for receiver in config["receivers"]:
        if receiver["name"] == SNS_RECEIVER:
            for sns in receiver["sns_configs"]:
                sns["api_url"] = sns_url
                sns["topic_arn"] = ALERT_TOPIC_ARN
                sns["sigv4"] = {"region": "us-east-1", "access_key": "AKIAFAKEFAKEFAKE", "secret_key": "fake"}
    return config


class Alertmanager:
    """prometheus-alertmanager on loopback ports, stopped on exit."""

    def __init__(self, config: dict, external_url: str = "http://alertmanager.monitoring:9093") -> None:
        self.binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
        if not self.binary:
            raise FileNotFoundError("prometheus-alertmanager (Debian package) or alertmanager not on PATH")
        self.config = config
        self.external_url = external_url
        self.port = free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="am-")
        self._proc: subprocess.Popen | None = None
        self.log_path = Path(self._dir.name) / "alertmanager.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "Alertmanager":
        cfg = Path(self._dir.name) / "alertmanager.yml"
        cfg.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self._log = open(self.log_path, "wb")
        self._proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={cfg}",
                f"--storage.path={self._dir.name}/data",
                f"--web.listen-address=127.0.0.1:{self.port}",
                f"--web.external-url={self.external_url}",
                "--web.route-prefix=/",
                "--cluster.listen-address=",
                "--log.level=debug",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"alertmanager exited: {self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.__exit__()
                raise TimeoutError("alertmanager did not become ready in 20 s")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        if self._proc and self._proc.poll() is None:
            stop_process(self._proc)
        self._log.close()
        self._dir.cleanup()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def post_alerts(self, alerts: list[dict]) -> None:
        body = json.dumps(alerts).encode()
        req = urllib.request.Request(
            f"{self.url}/api/v2/alerts", data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200, r.read()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples whose labels include ``labels``."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as r:
            text = r.read().decode()
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name):
                continue
            series, _, value = line.rpartition(" ")
            if series != name and not series.startswith(name + "{"):
                continue
            if all(f'{k}="{v}"' in series for k, v in labels.items()):
                total += float(value)
        return total


def lambda_sns_event(publish: dict, timestamp: str, message_id: str | None = None) -> dict:
    """Wrap a captured Publish call as the event SNS hands to a Lambda subscriber."""
    form = publish["form"]
    topic = form["TopicArn"]
    message_id = message_id or publish["message_id"]
    sns = {
        "Type": "Notification",
        "MessageId": message_id,
        "TopicArn": topic,
        "Subject": form.get("Subject"),
        "Message": form["Message"],
        "Timestamp": timestamp,
        "SignatureVersion": "1",
        "Signature": "EXAMPLE",
        "SigningCertUrl": "EXAMPLE",
        "UnsubscribeUrl": "EXAMPLE",
        "MessageAttributes": {k: {"Type": "String", "Value": v} for k, v in sorted(publish["attributes"].items())},
    }
    subscription = str(uuid.uuid5(uuid.NAMESPACE_URL, topic))
    return {
        "Records": [
            {
                "EventSource": "aws:sns",
                "EventVersion": "1.0",
                "EventSubscriptionArn": f"{topic}:{subscription}",
                "Sns": sns,
            }
        ]
    }
