"""Least privilege and the configuration contract, read from the deploy artifacts themselves.

* deploy/rbac.yaml grants each function exactly the Kubernetes verbs it needs, no wildcards,
  to the group its EKS access entry maps it to.
* template.yaml: IAM names every resource it can; each function gets the environment
  variables the code reads, with the documented defaults; failed async invocations retry
  twice and land in the dead-letter queue.
"""

from __future__ import annotations

import json

import yaml

from am_harness import REPO
from cfn import expanded, load_template, resources as plain_resources

FUNCTIONS = {
    "LatencyRestart": "latency-restart",
    "ErrorRollback": "error-rollback",
    "DbCircuitBreak": "db-circuit-break",
    "RegionFailover": "region-failover",
}
EVENTS_CREATE = ("events.k8s.io", "events", ("create",))
PAUSE_READS = {("", "namespaces", ("get",)), ("", "configmaps", ("get",))}
# The action budgets every function spends (one ConfigMap, by name).
BUDGET_WRITES = ("", "configmaps", ("get", "patch"))
RBAC = {
    "latency-restart": {("apps", "deployments", ("get", "patch")), EVENTS_CREATE, BUDGET_WRITES, *PAUSE_READS},
    "error-rollback": {
        ("networking.istio.io", "virtualservices", ("get", "list", "patch")),
        ("networking.istio.io", "destinationrules", ("list",)),
        ("", "services", ("get", "list")),
        # The stable destination must have a ready pod: labels and readiness only.
        ("", "pods", ("list",)),
        EVENTS_CREATE,
        BUDGET_WRITES,
        *PAUSE_READS,
    },
    "db-circuit-break": {("networking.istio.io", "destinationrules", ("get", "list", "patch")),
                         ("networking.istio.io", "serviceentries", ("list",)),
                         EVENTS_CREATE, BUDGET_WRITES, *PAUSE_READS},
    "region-failover": {
        ("networking.istio.io", "virtualservices", ("get", "list", "patch")),
        ("networking.istio.io", "destinationrules", ("get", "list", "patch")),
        # Where each subset's ready pods run: the Service, its Pods, the Nodes' regions.
        ("", "services", ("get",)),
        ("", "pods", ("list",)),
        ("", "nodes", ("list",)),
        EVENTS_CREATE,
        BUDGET_WRITES,
        *PAUSE_READS,
    },
}
SHARED_ENV = {
    "CLUSTER_NAMES": None,
    "DRY_RUN": ("DryRun", "true"),
    "NOTIFY_TOPIC_ARN": None,
    "ALERT_TOPIC_ARN": None,
    "COOLDOWN_SECONDS": ("CooldownSeconds", 900),
    "MAX_TARGETS_PER_INVOCATION": ("MaxTargetsPerInvocation", 10),
    "ESCALATE_AFTER": ("EscalateAfter", 3),
    "ESCALATION_WINDOW_SECONDS": ("EscalationWindowSeconds", 3600),
    "BUDGET_WINDOW_SECONDS": ("BudgetWindowSeconds", 3600),
    "MAX_ACTIONS_PER_WINDOW": ("MaxActionsPerWindow", 20),
    "MAX_CLUSTER_ACTIONS_PER_WINDOW": ("MaxClusterActionsPerWindow", 40),
    "BUDGET_NAMESPACE": ("BudgetNamespace", "kube-system"),
    "PROTECTED_NAMESPACES": ("ProtectedNamespaces", "kube-system,kube-public,kube-node-lease,istio-system"),
    "ALLOWED_NAMESPACES": ("AllowedNamespaces", ""),
    "MAX_DELIVERY_AGE_SECONDS": ("MaxDeliveryAgeSeconds", 900),
    "ISTIO_API_VERSION": ("IstioApiVersion", "v1"),
    "ISTIO_ROOT_NAMESPACE": ("IstioRootNamespace", "istio-system"),
    "API_TIMEOUT_SECONDS": ("ApiTimeoutSeconds", 10),
    "MAX_CONCURRENCY": ("MaxConcurrency", 8),
    "NOTIFY_TIMEOUT_MS": ("NotifyTimeoutMs", 3000),
    "PAGERDUTY_EVENTS_URL": ("PagerDutyEventsUrl", "https://events.pagerduty.com/v2/enqueue"),
    # Empty: AWS_LAMBDA_LOG_LEVEL (LoggingConfig ApplicationLogLevel) decides.
    "RUST_LOG": ("LogLevel", ""),
    # Secrets Manager ARNs of the sinks' credentials, empty when unused.
    "SLACK_WEBHOOK_SECRET_ARN": ("SlackWebhookSecretArn", ""),
    "PAGERDUTY_ROUTING_KEY_SECRET_ARN": ("PagerDutyRoutingKeySecretArn", ""),
    "GRAFANA_URL": ("GrafanaUrl", ""),
    "GRAFANA_TOKEN_SECRET_ARN": ("GrafanaTokenSecretArn", ""),
    "GRAFANA_DASHBOARD_UID": ("GrafanaDashboardUid", ""),
    "MIMALLOC_ALLOW_THP": None,
    "KUBECONFIG": None,
    "PROMETHEUS_URL": ("PrometheusQueryUrl", ""),
    "VERIFY_AFTER_SECONDS": ("VerifyAfterSeconds", 300),
    "VERIFY_WORSE_MARGIN": ("VerifyWorseMargin", "0.2"),
    "VERIFY_MATCH_CLUSTER": ("VerifyMatchCluster", "false"),
}
FUNCTION_ENV = {
    "db-circuit-break": {
        "RESTORE_ON_RESOLVE": ("RestoreOnResolve", "true"),
        "CB_CONSECUTIVE_ERRORS": ("CbConsecutiveErrors", 5),
        "CB_INTERVAL": ("CbInterval", "10s"),
        "CB_BASE_EJECTION_TIME": ("CbBaseEjectionTime", "30s"),
        "CB_MAX_EJECTION_PERCENT": ("CbMaxEjectionPercent", 50),
        "CB_MAX_CONNECTIONS": ("CbMaxConnections", 100),
        "CB_CONNECT_TIMEOUT": ("CbConnectTimeout", "2s"),
        "CB_MAX_PENDING_REQUESTS": ("CbMaxPendingRequests", 64),
        "CB_LOCALITY_LB": ("CbLocalityLb", "preserve"),
    },
    "region-failover": {
        "FAILBACK_ON_RESOLVE": ("FailbackOnResolve", "false"),
        "REGION_HEALTH_URLS": ("RegionHealthUrls", ""),
        "HEALTH_CHECK_TIMEOUT_MS": ("HealthCheckTimeoutMs", 2000),
        "MESH_CLUSTERS": ("MeshClusters", ""),
    },
}

# Every function has its own verify queue, named only when verification is on.
for _prefix, _function in (("LatencyRestart", "latency-restart"), ("ErrorRollback", "error-rollback"),
                           ("DbCircuitBreak", "db-circuit-break"), ("RegionFailover", "region-failover")):
    FUNCTION_ENV.setdefault(_function, {})["VERIFY_QUEUE_URL"] = None
    FUNCTION_ENV[_function]["VERIFY_CHECKS"] = (f"{_prefix}VerifyChecks", "")


def conditional_statement(statement: dict) -> dict:
    """A statement written as ``!If [Condition, statement, !Ref AWS::NoValue]`` is that statement."""
    if set(statement) == {"If"}:
        _condition, then, otherwise = statement["If"]
        assert otherwise == {"Ref": "AWS::NoValue"}, statement
        return then
    return statement


def walk(node):
    yield node
    if isinstance(node, dict):
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


def test_rbac_is_exactly_least_privilege():
    docs = [d for d in yaml.safe_load_all((REPO / "deploy" / "rbac.yaml").read_text()) if d]
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterRole"}
    bindings = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterRoleBinding"}
    assert set(roles) == set(bindings) == {f"mesh-remediation-{f}" for f in RBAC}
    for function, expected in RBAC.items():
        name = f"mesh-remediation-{function}"
        rules = {
            (group, resource, tuple(rule["verbs"]))
            for rule in roles[name]["rules"]
            for group in rule["apiGroups"]
            for resource in rule["resources"]
        }
        assert rules == expected, function
        for rule in roles[name]["rules"]:
            if rule["resources"] == ["configmaps"]:
                # Only the pause switch (read) and the budgets (read and patch), by name.
                allowed = {("get",): ["mesh-remediation"], ("get", "patch"): ["mesh-remediation-budget"]}
                assert rule["resourceNames"] == allowed[tuple(rule["verbs"])], rule
            else:
                assert set(rule) == {"apiGroups", "resources", "verbs"}, rule
        binding = bindings[name]
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name}
        assert binding["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": name}]
    assert "*" not in json.dumps(docs)


def test_each_cluster_gets_an_access_entry_per_role_mapped_to_its_rbac_group():
    outputs = load_template()["Outputs"]
    clusters = ["prod-use1", "prod-usw2@us-west-2", "prod-euw1@eu-west-1"]
    resources = expanded(clusters)["Resources"]
    for cluster in clusters:
        name, key = cluster.split("@")[0], "".join(c for c in cluster if c.isalnum())
        groups = []
        for prefix, function in FUNCTIONS.items():
            entry = resources[f"{prefix}AccessEntry{key}"]
            assert entry["Condition"] == "CreateAccessEntries"
            props = entry["Properties"]
            assert props["ClusterName"] == name
            assert props["PrincipalArn"] == {"Fn::GetAtt": [f"{prefix}Role", "Arn"]}
            assert props["Type"] == "STANDARD"
            assert props["KubernetesGroups"] == [f"mesh-remediation-{function}"]
            assert not any(g.startswith("system:") for g in props["KubernetesGroups"])
            groups += props["KubernetesGroups"]
        assert outputs["KubernetesGroups"]["Value"].split(",") == groups
    entries = [k for k, r in resources.items() if r["Type"] == "AWS::EKS::AccessEntry"]
    assert len(entries) == 4 * len(clusters)


def test_each_cluster_is_described_by_its_own_arn_and_region():
    clusters = ["prod-use1", "prod-usw2@us-west-2"]
    resources = expanded(clusters, region="us-east-1")["Resources"]
    want = {
        "ClusterAccessproduse1": "arn:aws:eks:us-east-1::cluster/prod-use1",
        "ClusterAccessprodusw2uswest2": "arn:aws:eks:us-west-2::cluster/prod-usw2",
    }
    for key, arn in want.items():
        policy = resources[key]
        assert policy["Type"] == "AWS::IAM::ManagedPolicy"
        assert [r["Ref"] for r in policy["Properties"]["Roles"]] == [f"{p}Role" for p in FUNCTIONS]
        [statement] = policy["Properties"]["PolicyDocument"]["Statement"]
        # The account id is a pseudo parameter SAM leaves empty when expanding offline.
        assert (statement["Action"], statement["Resource"]) == ("eks:DescribeCluster", arn), statement
    described = [k for k, r in resources.items() if k.startswith("ClusterAccess")]
    assert sorted(described) == sorted(want)


def test_iam_names_every_resource_it_can():
    resources = plain_resources(load_template())
    statements = [
        s
        for r in resources.values()
        if r["Type"] in ("AWS::IAM::Role", "AWS::IAM::ManagedPolicy")
        for node in walk(r["Properties"])
        if isinstance(node, dict) and "Statement" in node
        for s in map(conditional_statement, node["Statement"])
    ]
    for s in statements:
        actions = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
        assert not any("*" in a for a in actions), s
        if s.get("Resource") == "*":
            # These actions support no resource ARNs: X-Ray's, and the network-interface
            # Describe calls Lambda makes inside a VPC.
            assert sorted(actions) in (
                ["xray:PutTelemetryRecords", "xray:PutTraceSegments"],
                ["ec2:DescribeNetworkInterfaces", "ec2:DescribeSubnets"],
            ), s
    by_sid = {s.get("Sid"): s for s in statements}
    assert "DescribeTheCluster" not in by_sid, "each cluster is granted by its own ClusterAccess policy"
    assert by_sid["Report"]["Resource"] == {"Ref": "NotificationTopic"}
    assert by_sid["DeadLetters"]["Resource"] == {"GetAtt": "DeadLetterQueue.Arn"}
    assert by_sid["PublishAlerts"] == {
        "Sid": "PublishAlerts", "Effect": "Allow", "Action": "sns:Publish", "Resource": {"Ref": "AlertTopic"}
    }
    roles = {k for k, r in resources.items() if r["Type"] == "AWS::IAM::Role"}
    assert roles == {f"{p}Role" for p in FUNCTIONS}
    for prefix in FUNCTIONS:
        fn = resources[f"{prefix}Function"]["Properties"]
        assert fn["Role"] == {"GetAtt": f"{prefix}Role.Arn"}
        logs = resources[f"{prefix}Role"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
        assert logs == [{
            "Effect": "Allow",
            "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": {"GetAtt": f"{prefix}LogGroup.Arn"},
        }]
        assert fn["LoggingConfig"] == {"LogGroup": {"Ref": f"{prefix}LogGroup"}}


def test_functions_get_the_configuration_contract_with_documented_defaults():
    template = load_template()
    params, resources = template["Parameters"], template["Resources"]
    shared = template["Globals"]["Function"]["Environment"]["Variables"]
    assert set(shared) == set(SHARED_ENV)
    assert shared["NOTIFY_TOPIC_ARN"] == {"Ref": "NotificationTopic"}
    assert shared["ALERT_TOPIC_ARN"] == {"Ref": "AlertTopic"}
    assert shared["MIMALLOC_ALLOW_THP"] == "0"
    assert shared["KUBECONFIG"] == "", "only local invoke sets it"

    def check(env: dict, contract: dict):
        for var, spec in contract.items():
            if spec is None:
                continue
            param, default = spec
            assert env[var] == {"Ref": param}, var
            assert params[param].get("Default") == default, param
            assert params[param].get("Description"), param

    check(shared, SHARED_ENV)
    assert shared["CLUSTER_NAMES"] == {"Join": [",", {"Ref": "ClusterNames"}]}
    assert params["ClusterNames"]["Type"] == "CommaDelimitedList"
    assert "Default" not in params["ClusterNames"], "a deployer names the clusters"
    for prefix, function in FUNCTIONS.items():
        own = resources[f"{prefix}Function"]["Properties"].get("Environment", {}).get("Variables", {})
        assert set(own) == set(FUNCTION_ENV.get(function, {})), function
        check(own, FUNCTION_ENV.get(function, {}))
    for param in params.values():
        assert param.get("Description")


def test_runtime_build_and_failure_handling():
    template = load_template()
    g = template["Globals"]["Function"]
    assert (g["Runtime"], g["Handler"], g["CodeUri"], g["MemorySize"], g["Timeout"]) == (
        "provided.al2023", "bootstrap", "./", 128, 30
    )
    assert g["Architectures"] == [{"Ref": "Architecture"}]
    assert template["Parameters"]["Architecture"]["Default"] == "arm64"
    assert template["Parameters"]["Architecture"]["AllowedValues"] == ["arm64", "x86_64"]
    assert g["Tracing"] == "Active" and g["LoggingConfig"] == {
        "LogFormat": "JSON", "ApplicationLogLevel": {"Ref": "ApplicationLogLevel"}
    }
    assert g["EventInvokeConfig"]["MaximumRetryAttempts"] == 2
    assert g["EventInvokeConfig"]["DestinationConfig"]["OnFailure"] == {
        "Type": "SQS", "Destination": {"GetAtt": "DeadLetterQueue.Arn"}
    }
    resources = template["Resources"]
    for prefix, function in FUNCTIONS.items():
        meta = resources[f"{prefix}Function"]["Metadata"]
        assert (meta["BuildMethod"], meta["BuildProperties"]) == ("rust-cargolambda", {"Binary": function})
    alarm = resources["DeadLetterQueueAlarm"]["Properties"]
    assert alarm["MetricName"] == "ApproximateNumberOfMessagesVisible"
    assert alarm["Dimensions"] == [{"Name": "QueueName", "Value": {"GetAtt": "DeadLetterQueue.QueueName"}}]
    assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (0, "GreaterThanThreshold")


def test_local_sam_settings_only_name_variables_the_template_declares():
    # `sam local invoke --env-vars` ignores variables the template does not declare.
    template = load_template()
    declared = set(template["Globals"]["Function"]["Environment"]["Variables"])
    for resource in plain_resources(template).values():
        if resource["Type"] == "AWS::Serverless::Function":
            declared |= set(resource["Properties"].get("Environment", {}).get("Variables", {}))
    settings = json.loads((REPO / "local" / "sam-env.json").read_text())
    assert set(settings) == {"Parameters"}
    assert set(settings["Parameters"]) <= declared, set(settings["Parameters"]) - declared
    assert settings["Parameters"]["KUBECONFIG"] == "kubeconfig"
    assert settings["Parameters"]["MAX_DELIVERY_AGE_SECONDS"] == "0"
