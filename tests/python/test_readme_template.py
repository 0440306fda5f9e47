"""README.md and template.yaml agree: every template parameter and every environment variable the
README documents exists in the template, and the reverse; the defaults the README gives are the
template's; every checkov or cfn-lint suppression in the template says why; the SAM CLI version
the README states is the one the scripts enforce."""

from __future__ import annotations

import re

from am_harness import REPO
from cfn import load_template, resources

README = (REPO / "README.md").read_text()
DEPLOY_GUIDE = (REPO / "deploy" / "README.md").read_text()
TEMPLATE_TEXT = (REPO / "template.yaml").read_text()

# Variables the README documents that the template rightly does not set.
NOT_SET_BY_THE_TEMPLATE = {
    "CLUSTER_KUBECONFIGS": "local runs and tests reach clusters through kubeconfig files",
    "AWS_REGION": "set by Lambda",
    "AWS_ENDPOINT_URL": "local emulators only",
    "AWS_LAMBDA_LOG_LEVEL": "set by Lambda from LoggingConfig.ApplicationLogLevel",
    "SLACK_WEBHOOK_URL": "the local-run path; in AWS the webhook comes from Secrets Manager",
    "PAGERDUTY_ROUTING_KEY": "the local-run path; in AWS the key comes from Secrets Manager",
    "GRAFANA_TOKEN": "the local-run path; in AWS the token comes from Secrets Manager",
}
# Name=value pairs in the docs that are AWS CLI arguments or query fields, not parameters.
AWS_CLI_FIELDS = {"MessageStructure", "OutputKey"}
# Variables the template sets that are explained outside the README's configuration table, and
# where: not configuration a deployer sets.
EXPLAINED_ELSEWHERE = {
    "KUBECONFIG": "README.md",  # Local invoke: empty in AWS, set by sam local invoke --env-vars
    "MIMALLOC_ALLOW_THP": "BENCHMARKS.md",  # the allocator's huge pages, fixed off
}


def section(text: str, heading: str) -> str:
    start = text.index(f"\n{heading}\n")
    level = heading.split(" ")[0]
    rest = text[start + len(heading) + 2:]
    end = re.search(rf"^#{{1,{len(level)}}} ", rest, re.M)
    return rest[: end.start()] if end else rest


def table_rows(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not re.match(r"^\|[-| ]+\|$", line):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows[1:]  # without the header


def ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def refs(node):
    if isinstance(node, dict):
        if set(node) == {"Ref"}:
            yield node["Ref"]
        for v in node.values():
            yield from refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from refs(v)


def template_environment() -> dict[str, set[str]]:
    """Each environment variable the template sets -> the parameters its value references."""
    template = load_template()
    envs = [template["Globals"]["Function"]["Environment"]["Variables"]]
    for r in resources(template).values():
        if r["Type"] == "AWS::Serverless::Function":
            envs.append(r["Properties"].get("Environment", {}).get("Variables", {}))
    out: dict[str, set[str]] = {}
    for env in envs:
        for var, value in env.items():
            out.setdefault(var, set()).update(r for r in refs(value) if r in template["Parameters"])
    return out


def test_the_parameter_table_is_the_templates_parameters():
    params = load_template()["Parameters"]
    rows = table_rows(section(README, "### Template parameters"))
    documented = {ticked(r[0])[0]: r for r in rows}
    assert len(documented) == len(rows), "a parameter is listed twice"
    assert set(documented) - set(params) == set(), "README lists parameters the template lacks"
    assert set(params) - set(documented) == set(), "template parameters the README does not list"
    env = template_environment()
    for name, (_, sets, default, what) in documented.items():
        want_vars = sorted(v for v, ps in env.items() if name in ps)
        assert sorted(ticked(sets)) == want_vars, (name, sets)
        want = params[name].get("Default")
        if want is None:
            assert "required" in default, (name, default)
        elif want == "":
            assert default == "empty", (name, default)
        else:
            assert ticked(default) == [str(want)], (name, default, want)
        assert what, name


def test_every_documented_variable_is_set_by_the_template_and_the_reverse():
    env = template_environment()
    rows = table_rows(section(README, "### Environment variables"))
    documented = {v: r for r in rows for v in ticked(r[0])}
    unknown = set(documented) - set(env) - set(NOT_SET_BY_THE_TEMPLATE)
    assert not unknown, f"README documents variables the template does not set: {sorted(unknown)}"
    undocumented = set(env) - set(documented) - set(EXPLAINED_ELSEWHERE)
    assert not undocumented, f"template sets variables the README does not document: {sorted(undocumented)}"
    for var, where in EXPLAINED_ELSEWHERE.items():
        assert var in env and var in (REPO / where).read_text(), (var, where)
    assert set(NOT_SET_BY_THE_TEMPLATE) <= set(documented), "an exception no longer documented: drop it"
    # A default the README gives as a literal is the default of the parameter that sets it.
    params = load_template()["Parameters"]
    for var, row in documented.items():
        sources = env.get(var, set())
        literal = re.fullmatch(r"`([^`]*)`", row[1])
        if len(sources) == 1 and literal:
            (param,) = sources
            assert str(params[param].get("Default")) == literal.group(1), (var, param, row[1], params[param].get("Default"))


def test_parameters_the_docs_set_exist():
    params = set(load_template()["Parameters"])
    for name, text in (("README.md", README), ("deploy/README.md", DEPLOY_GUIDE)):
        used = set(re.findall(r"(?<![A-Za-z_./-])([A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)+)=", text))
        assert used, name
        assert used - AWS_CLI_FIELDS <= params, (name, sorted(used - AWS_CLI_FIELDS - params))


def test_every_suppression_says_why():
    template = load_template()
    skips = 0
    for rid, r in resources(template).items():
        for skip in (r.get("Metadata") or {}).get("checkov", {}).get("skip", []):
            assert re.fullmatch(r"CKV_AWS_\d+", skip["id"]) and len(skip.get("comment", "")) >= 40, (rid, skip)
            skips += 1
    ignores = re.findall(r"^\s+ignore_checks:\n((?:\s+- .*\n)+)", TEMPLATE_TEXT, re.M)
    lines = [line for block in ignores for line in block.splitlines()]
    for line in lines:
        m = re.fullmatch(r"\s+- ([A-Z]+\d+)\s+#\s*(.+)", line)
        assert m and len(m.group(2)) >= 40, line
    assert skips and lines


def test_the_sam_cli_version_stated_is_the_one_enforced():
    script = (REPO / "scripts" / "lib" / "sam-cli.sh").read_text()
    version = re.search(r"^SAM_CLI_MIN_VERSION=([0-9.]+)$", script, re.M).group(1)
    for text in (README, DEPLOY_GUIDE, (REPO / "samconfig.toml").read_text()):
        stated = set(re.findall(r"SAM CLI ([0-9]+\.[0-9]+\.[0-9]+) or later", text))
        assert stated == {version}, stated
