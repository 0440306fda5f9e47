#!/usr/bin/env python3
"""Writes a copy of template.yaml whose parameters default to the given values, so that tools
which take no parameter values (cfn-lint, checkov, sam validate's local Fn::ForEach expansion)
check the template as a deployer's parameters would make it.

Usage: template-variant.py TEMPLATE OUT Name=value [Name=value ...]
Each Name must be a parameter of TEMPLATE; its Default becomes the value (a parameter without a
Default gets one). Everything else is copied unchanged."""

import re
import sys


def main() -> None:
    source, out, *pairs = sys.argv[1:]
    text = open(source).read()
    for pair in pairs:
        name, value = pair.split("=", 1)
        m = re.search(rf"^  {re.escape(name)}:\n    Type: [^\n]+\n", text, re.M)
        if not m:
            sys.exit(f"template-variant: no parameter {name} in {source}")
        rest = text[m.end():]
        end = re.search(r"^(?!    |\s*$)", rest, re.M)
        body = rest[: end.start()] if end else rest
        body = re.sub(r"^    Default: .*\n", "", body, flags=re.M)
        quoted = value.replace("\\", "\\\\").replace('"', '\\"')
        text = text[: m.end()] + f'    Default: "{quoted}"\n' + body + (rest[end.start():] if end else "")
    open(out, "w").write(text)


if __name__ == "__main__":
    main()
