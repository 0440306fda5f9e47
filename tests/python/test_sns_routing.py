"""SNS fan-out: each sample in events/ reaches exactly the function its filter policy selects.

Reads the SNS subscriptions from template.yaml, recreates them in the moto emulator (one SQS
queue per function standing in for the Lambda subscriber, with that function's
FilterPolicy / FilterPolicyScope), publishes every sample event's Message with its
MessageAttributes, and checks where each one arrived. A sample whose `remediation`
attribute names a function reaches that function only; any other value (e.g. a legacy
"rollback") reaches none. Samples that are not SNS events (direct invokes) are skipped.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from am_harness import REPO, free_port, stop_process
from cfn import load_template

FUNCTIONS = {
    "LatencyRestartFunction": "latency-restart",
    "ErrorRollbackFunction": "error-rollback",
    "DbCircuitBreakFunction": "db-circuit-break",
    "RegionFailoverFunction": "region-failover",
}
STACK_NAME = "mesh-remediation"
REGION = "us-east-1"


def sns_subscriptions(template: dict) -> dict[str, dict]:
    """function name -> {topic, FilterPolicy, FilterPolicyScope} for every SNS event in the template."""
    subs = {}
    for logical_id, resource in template["Resources"].items():
        if logical_id.startswith("Fn::ForEach") or resource["Type"] != "AWS::Serverless::Function":
            continue
        binary = resource["Metadata"]["BuildProperties"]["Binary"]
        for event in resource["Properties"].get("Events", {}).values():
            if event["Type"] == "SNS":
                props = event["Properties"]
                subs[binary] = {
                    "logical_id": logical_id,
                    "topic": props["Topic"],
                    "FilterPolicy": props["FilterPolicy"],
                    "FilterPolicyScope": props.get("FilterPolicyScope", "MessageAttributes"),
                }
    return subs


def test_template_subscribes_each_function_to_its_own_remediation():
    template = load_template()
    subs = sns_subscriptions(template)
    assert {s["logical_id"]: name for name, s in subs.items()} == FUNCTIONS
    for name, sub in subs.items():
        assert sub["topic"] == {"Ref": "AlertTopic"}
        assert sub["FilterPolicy"] == {"remediation": [name]}
        assert sub["FilterPolicyScope"] == "MessageAttributes"
    assert template["Resources"]["AlertTopic"]["Properties"]["TopicName"] == {"Sub": "${AWS::StackName}-alerts"}


@pytest.fixture(scope="module")
def moto():
    server = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    if not server:
        pytest.skip("moto[server] is not installed")
    port = free_port()
    proc = subprocess.Popen(
        [server, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start")
                time.sleep(0.1)
        yield url
    finally:
        stop_process(proc)


def client(service: str, url: str):
    import boto3

    return boto3.client(
        service, endpoint_url=url, region_name=REGION,
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )


def sns_samples() -> list[tuple[str, dict]]:
    samples = []
    for path in sorted((REPO / "events").glob("*.json")):
        for record in json.loads(path.read_text()).get("Records", []):
            if "Sns" in record:
                samples.append((path.name, record["Sns"]))
    return samples


def test_every_sample_reaches_exactly_the_intended_function(moto):
    template = load_template()
    subs = sns_subscriptions(template)
    sns, sqs = client("sns", moto), client("sqs", moto)
    topic_arn = sns.create_topic(Name=f"{STACK_NAME}-alerts")["TopicArn"]
    queues = {}
    for name, sub in subs.items():
        queue_url = sqs.create_queue(QueueName=f"fn-{name}")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sns.subscribe(
            TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn,
            Attributes={"FilterPolicy": json.dumps(sub["FilterPolicy"]), "FilterPolicyScope": sub["FilterPolicyScope"]},
        )
        queues[name] = queue_url

    samples = sns_samples()
    assert len(samples) >= 12, "the firing/resolved/drill samples of all four functions"
    seen_functions = set()
    for file_name, record in samples:
        assert record["TopicArn"] == topic_arn, file_name
        attributes = record.get("MessageAttributes", {})
        remediation = attributes.get("remediation", {}).get("Value")
        intended = remediation if remediation in subs else None
        prefix = next((f for f in subs if file_name.startswith(f + "-")), None)
        if prefix:
            assert intended == prefix, f"{file_name} carries remediation={remediation!r}"
        publish = {
            "TopicArn": topic_arn,
            "Message": record["Message"],
            "MessageAttributes": {
                k: {"DataType": v["Type"], "StringValue": v["Value"]} for k, v in attributes.items()
            },
        }
        if record.get("Subject"):
            publish["Subject"] = record["Subject"]
        sns.publish(**publish)

        arrived = {}
        for name, queue_url in queues.items():
            got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", [])
            for m in got:
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
            if got:
                arrived[name] = got
        expected = {intended} if intended else set()
        assert set(arrived) == expected, f"{file_name}: remediation={remediation!r} reached {sorted(arrived)}"
        if intended:
            (delivered,) = arrived[intended]
            body = json.loads(delivered["Body"])
            assert body["Message"] == record["Message"]
            assert body["MessageAttributes"]["remediation"]["Value"] == intended
            seen_functions.add(intended)
    assert seen_functions == set(subs)
