"""template.yaml deployed to moto's CloudFormation, and its wiring checked.

The template is made deployable the way `sam deploy` makes it: Fn::ForEach expanded by SAM
CLI's own expander (cfn.expanded), the SAM transform applied by aws-sam-translator (what
CloudFormation's AWS::Serverless-2016-10-31 runs), CodeUri pointing at a zip in (moto's) S3.
The stack is then created in moto's CloudFormation with a deployer's parameters.

Where moto stops (moto 5.2.5): its CloudFormation creates topics, the queue, roles, managed
policies, log groups, the functions and their permissions, but it has no implementation of
AWS::SNS::Subscription, AWS::SNS::TopicPolicy, AWS::SQS::QueuePolicy, AWS::CloudWatch::Alarm,
AWS::Lambda::EventInvokeConfig, AWS::EKS::AccessEntry or AWS::Logs::QueryDefinition: it skips
each with a warning and reports
the stack CREATE_COMPLETE without them. So the subscriptions with their filter policies, the
on-failure destinations and the alarms cannot be checked in moto; they are checked here in the
translated template (the exact resources CloudFormation would create), and
test_moto_creates_no_subscription_alarm_or_destination fails once moto does create them, so the
live checks can take their place.
"""

from __future__ import annotations

import copy
import io
import json
import warnings
import zipfile

import pytest

from cfn import expanded

boto3 = pytest.importorskip("boto3")
moto = pytest.importorskip("moto")
from moto import mock_aws  # noqa: E402
from samtranslator.parser.parser import Parser  # noqa: E402
from samtranslator.translator.translator import Translator  # noqa: E402

REGION = "us-east-1"
ACCOUNT = "123456789012"
STACK = "mesh-remediation"
BUCKET = "artifacts"
FUNCTIONS = {
    "LatencyRestart": "latency-restart",
    "ErrorRollback": "error-rollback",
    "DbCircuitBreak": "db-circuit-break",
    "RegionFailover": "region-failover",
}
PARAMETERS = {
    "ClusterNames": "prod-use1",
    "NotificationEmail": "oncall@example.com",
    "AmpWorkspaceArn": f"arn:aws:aps:{REGION}:{ACCOUNT}:workspace/ws-12345678-abcd-1234-abcd-123456789012",
    "ReservedConcurrency": "5",
}
NOT_IN_MOTO = {
    "AWS::SNS::Subscription",
    "AWS::SNS::TopicPolicy",
    "AWS::SQS::QueuePolicy",
    "AWS::CloudWatch::Alarm",
    "AWS::Lambda::EventInvokeConfig",
    "AWS::EKS::AccessEntry",
    "AWS::Logs::QueryDefinition",
}


@pytest.fixture(scope="module")
def translated() -> dict:
    """The CloudFormation template `sam deploy` would hand to CloudFormation."""
    pseudo = {"AWS::AccountId": ACCOUNT, "AWS::Partition": "aws", "AWS::StackName": STACK}
    template = expanded([PARAMETERS["ClusterNames"]], REGION, {**pseudo, **PARAMETERS})
    template["Transform"] = "AWS::Serverless-2016-10-31"
    template["Globals"]["Function"].pop("CodeUri")
    for prefix, function in FUNCTIONS.items():
        template["Resources"][f"{prefix}Function"]["Properties"]["CodeUri"] = f"s3://{BUCKET}/{function}.zip"
    params = {"AWS::Region": REGION, "AWS::AccountId": ACCOUNT, "AWS::Partition": "aws", **PARAMETERS}
    # The roles are the template's own: the transform looks up no AWS managed policy.
    translator = Translator(None, Parser(), boto_session=boto3.session.Session(region_name=REGION))
    return translator.translate(copy.deepcopy(template), parameter_values=params, get_managed_policy_map=dict)


def by_type(template: dict, kind: str) -> dict:
    return {k: r for k, r in template["Resources"].items() if r["Type"] == kind}


@pytest.fixture(scope="module")
def stack(translated):
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=BUCKET)
        for function in FUNCTIONS.values():
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as z:
                z.writestr("bootstrap", "#!/bin/sh\n")
            s3.put_object(Bucket=BUCKET, Key=f"{function}.zip", Body=buf.getvalue())
        cfn = boto3.client("cloudformation", region_name=REGION)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cfn.create_stack(
                StackName=STACK,
                TemplateBody=json.dumps(translated),
                Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in PARAMETERS.items()],
                Capabilities=["CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"],
            )
        status = cfn.describe_stacks(StackName=STACK)["Stacks"][0]["StackStatus"]
        skipped = {
            str(w.message).split("Tried to parse ")[1].split(" but")[0]
            for w in caught
            if "not supported by moto's CloudFormation" in str(w.message)
        }
        yield {
            "status": status,
            "skipped": skipped,
            "resources": cfn.describe_stack_resources(StackName=STACK)["StackResources"],
            "outputs": {o["OutputKey"]: o["OutputValue"] for o in cfn.describe_stacks(StackName=STACK)["Stacks"][0].get("Outputs", [])},
            "sns": boto3.client("sns", region_name=REGION),
            "sqs": boto3.client("sqs", region_name=REGION),
            "lambda": boto3.client("lambda", region_name=REGION),
            "logs": boto3.client("logs", region_name=REGION),
            "iam": boto3.client("iam", region_name=REGION),
        }


def test_stack_is_created_with_its_topics_queue_log_groups_and_functions(stack):
    assert stack["status"] == "CREATE_COMPLETE"
    topics = {t["TopicArn"].rsplit(":", 1)[1] for t in stack["sns"].list_topics()["Topics"]}
    assert topics == {f"{STACK}-alerts", f"{STACK}-notifications"}
    queues = stack["sqs"].list_queues()["QueueUrls"]
    (queue,) = [q for q in queues if q.endswith("-dlq")]
    assert len(queues) == 1 + len(FUNCTIONS), f"the dead-letter queue and one verify queue per function: {queues}"
    assert queue.endswith(f"/{STACK}-dlq")
    attrs = stack["sqs"].get_queue_attributes(QueueUrl=queue, AttributeNames=["All"])["Attributes"]
    assert attrs["MessageRetentionPeriod"] == "1209600"
    groups = {g["logGroupName"]: g for g in stack["logs"].describe_log_groups()["logGroups"]}
    for function in FUNCTIONS.values():
        assert groups[f"/aws/lambda/{STACK}-{function}"]["retentionInDays"] == 30
        config = stack["lambda"].get_function(FunctionName=f"{STACK}-{function}")
        conf = config["Configuration"]
        assert (conf["Runtime"], conf["Handler"], conf["MemorySize"], conf["Timeout"]) == ("provided.al2023", "bootstrap", 128, 30)
        # (moto's CloudFormation does not pass Architectures on: it reports x86_64.)
        env = conf["Environment"]["Variables"]
        assert env["DRY_RUN"] == "true" and env["CLUSTER_NAMES"] == "prod-use1"
        assert env["ALERT_TOPIC_ARN"].endswith(f":{STACK}-alerts")
        assert env["NOTIFY_TOPIC_ARN"].endswith(f":{STACK}-notifications")
        assert conf["Role"].split("/")[-1].startswith(f"{STACK}-")
        assert "VpcConfig" not in conf or not conf["VpcConfig"].get("SubnetIds")
    assert stack["outputs"]["AlertTopicArn"].endswith(f":{STACK}-alerts")


def test_moto_creates_no_subscription_alarm_or_destination(stack):
    """Where moto stops: the types it skips. When a moto upgrade creates one of them, this fails
    and the live checks of the subscriptions, destinations and alarms belong here."""
    assert stack["skipped"] == NOT_IN_MOTO
    topics = stack["sns"].list_topics()["Topics"]
    assert all(not stack["sns"].list_subscriptions_by_topic(TopicArn=t["TopicArn"])["Subscriptions"] for t in topics)


def test_translated_subscriptions_filter_on_the_remediation_attribute(translated):
    subscriptions = by_type(translated, "AWS::SNS::Subscription")
    lambdas = {k: v for k, v in subscriptions.items() if v["Properties"]["Protocol"] == "lambda"}
    assert len(lambdas) == 4
    reached = {}
    for sub in lambdas.values():
        p = sub["Properties"]
        assert p["TopicArn"] == {"Ref": "AlertTopic"}
        assert p["FilterPolicyScope"] == "MessageAttributes"
        assert p["RedrivePolicy"] == {"deadLetterTargetArn": {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}}
        target = p["Endpoint"]["Fn::GetAtt"][0]
        reached[target] = p["FilterPolicy"]
    assert reached == {f"{prefix}Function": {"remediation": [function]} for prefix, function in FUNCTIONS.items()}
    permissions = by_type(translated, "AWS::Lambda::Permission")
    assert {p["Properties"]["FunctionName"]["Ref"] for p in permissions.values()} == set(reached)
    assert all(p["Properties"]["Principal"] == "sns.amazonaws.com" and p["Properties"]["SourceArn"] == {"Ref": "AlertTopic"}
               for p in permissions.values())
    (email,) = [v for v in subscriptions.values() if v["Properties"]["Protocol"] == "email"]
    assert email["Properties"]["TopicArn"] == {"Ref": "NotificationTopic"}


def test_translated_failed_events_go_to_the_dead_letter_queue(translated):
    configs = by_type(translated, "AWS::Lambda::EventInvokeConfig")
    assert len(configs) == 4
    for c in configs.values():
        p = c["Properties"]
        assert p["MaximumRetryAttempts"] == 2
        assert p["DestinationConfig"]["OnFailure"]["Destination"] == {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}
    assert {c["Properties"]["FunctionName"]["Ref"] for c in configs.values()} == {f"{p}Function" for p in FUNCTIONS}


def test_translated_alarms_watch_every_function_and_the_alert_topic(translated):
    alarms = by_type(translated, "AWS::CloudWatch::Alarm")
    lambda_metrics = set()
    sns_metrics = set()
    for alarm in alarms.values():
        p = alarm["Properties"]
        assert p["AlarmActions"] == [{"Ref": "NotificationTopic"}], p
        if p.get("Namespace") == "AWS/Lambda":
            (dim,) = p["Dimensions"]
            assert dim["Name"] == "FunctionName"
            lambda_metrics.add((p["MetricName"], dim["Value"]))
        elif p.get("Namespace") == "AWS/SNS":
            (dim,) = p["Dimensions"]
            assert dim == {"Name": "TopicName", "Value": {"Fn::GetAtt": ["AlertTopic", "TopicName"]}}, dim
            sns_metrics.add(p["MetricName"])
    assert lambda_metrics == {
        (metric, f"{STACK}-{function}")
        for metric in ("Errors", "Throttles", "DestinationDeliveryFailures")
        for function in FUNCTIONS.values()
    }
    assert sns_metrics == {"NumberOfNotificationsFailed", "NumberOfNotificationsFilteredOut-InvalidAttributes"}
    for prefix in FUNCTIONS:
        assert translated["Resources"][f"{prefix}Function"]["Properties"]["FunctionName"] == f"{STACK}-{FUNCTIONS[prefix]}"


def test_translated_functions_are_configured_as_deployed(translated):
    for prefix in FUNCTIONS:
        p = translated["Resources"][f"{prefix}Function"]["Properties"]
        # The expander has evaluated the conditions for the deployer's values: a reservation of
        # ReservedConcurrency, no SubnetIds so no VpcConfig, no KmsKeyArn so no key.
        assert p["ReservedConcurrentExecutions"] == PARAMETERS["ReservedConcurrency"]
        assert "VpcConfig" not in p and "KmsKeyArn" not in p, p
        assert p["LoggingConfig"]["LogGroup"] == {"Ref": f"{prefix}LogGroup"}
        log_group = translated["Resources"][f"{prefix}LogGroup"]
        assert (log_group["DeletionPolicy"], log_group["UpdateReplacePolicy"]) == ("Retain", "Retain")


def test_translated_amp_topic_policy_is_conditioned_on_the_workspace(translated):
    (policy,) = by_type(translated, "AWS::SNS::TopicPolicy").values()
    assert policy["Condition"] == "HasAmpWorkspace"
    (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": "aps.amazonaws.com"}
    # (the expander has substituted the deployer's values, as CloudFormation would)
    assert statement["Condition"] == {
        "StringEquals": {"aws:SourceAccount": ACCOUNT},
        "ArnEquals": {"aws:SourceArn": PARAMETERS["AmpWorkspaceArn"]},
    }
