"""template.yaml as data: a YAML loader that keeps CloudFormation short-form tags.

``!Ref X`` loads as ``{"Ref": "X"}``, ``!GetAtt A.B`` as ``{"GetAtt": "A.B"}``, ``!Sub s`` as
``{"Sub": "s"}`` and so on, which is enough to inspect the template in tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"


class CfnLoader(yaml.SafeLoader):
    """SafeLoader that keeps CloudFormation short-form tags as ``{tag: value}``."""


def _cfn_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {suffix: value}


CfnLoader.add_multi_constructor("!", _cfn_tag)


def load_template(path: Path = TEMPLATE) -> dict:
    return yaml.load(path.read_text(), Loader=CfnLoader)


def resources(template: dict) -> dict:
    """The template's resources, without the Fn::ForEach loops (see ``expanded``)."""
    return {k: v for k, v in template["Resources"].items() if not k.startswith("Fn::ForEach")}


def expanded(clusters: list[str], region: str = "us-east-1", parameters: dict | None = None) -> dict:
    """template.yaml with its AWS::LanguageExtensions loops expanded for ``clusters`` by SAM
    CLI's own expander (what ``sam build --language-extensions`` and CloudFormation do), in
    CloudFormation's long form (``{"Fn::GetAtt": [...]}``). ``parameters`` (pseudo parameters such
    as ``AWS::AccountId`` included) are values the expander may substitute; one it lacks may be
    left out where it is referenced.

    It runs in a process of its own: importing SAM CLI's YAML helper re-registers PyYAML's
    mapping constructors for the whole process (mappings load as OrderedDict, which
    ``yaml.safe_dump`` then refuses), which would break every later test that writes YAML."""
    script = """
import json, sys
from samcli.lib.cfn_language_extensions.sam_integration import expand_language_extensions
from samcli.yamlhelper import yaml_parse
clusters, region, parameters, path = json.loads(sys.argv[1])
template = yaml_parse(open(path).read())
values = {**parameters, "ClusterNames": clusters, "AWS::Region": region}
result = expand_language_extensions(template, values, enabled=True)
print(json.dumps(result.expanded_template))
"""
    args = json.dumps([clusters, region, parameters or {}, str(TEMPLATE)])
    out = subprocess.run([sys.executable, "-c", script, args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)
