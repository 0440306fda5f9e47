#!/usr/bin/env python3
"""One release bundle (see scripts/release): the packaged template, one zip per function and the
deploy files, as a zip with fixed timestamps and modes, so the same inputs give the same bytes.

Usage: release-bundle.py --version V --arch arm64|x86_64 --binaries DIR --out FILE.zip
DIR holds one bootstrap per function, named after the function."""

from __future__ import annotations

import argparse
import io
import re
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FUNCTIONS = ["latency-restart", "error-rollback", "db-circuit-break", "region-failover"]
EPOCH = (1980, 1, 1, 0, 0, 0)
FILES = ["samconfig.toml", "README.md", "LICENSE", "CHANGELOG.md", "scripts/amp-alertmanager-definition"]


def entry(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, EPOCH)
    info.external_attr = (0o100000 | mode) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


def function_zip(bootstrap: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(entry("bootstrap", 0o755), bootstrap.read_bytes(), compresslevel=9)
    return buf.getvalue()


def replace_once(text: str, old: str, new: str) -> str:
    if text.count(old) != 1:
        raise SystemExit(f"release-bundle: template.yaml changed shape, expected once: {old!r}")
    return text.replace(old, new)


def packaged_template(version: str, arch: str) -> str:
    text = (REPO / "template.yaml").read_text()
    text = replace_once(
        text,
        "    # The Cargo workspace root: cargo-lambda builds the binary named in BuildProperties.\n    CodeUri: ./\n",
        "    # Each function's CodeUri is its zip in functions/ (sam deploy uploads it).\n",
    )
    for f in FUNCTIONS:
        text = replace_once(text, f"      BuildMethod: rust-cargolambda\n      BuildProperties:\n        Binary: {f}\n", "")
        name = f"      FunctionName: !Sub ${{AWS::StackName}}-{f}\n"
        text = replace_once(text, name, name + f"      CodeUri: functions/{f}.zip\n")
    m = re.search(r"^  Architecture:\n(    .*\n)+", text, re.M)
    block = m.group(0)
    block = re.sub(r"^    Default: .*\n", f"    Default: {arch}\n", block, flags=re.M)
    block = re.sub(r"^    AllowedValues: .*\n", f"    AllowedValues: [{arch}]\n", block, flags=re.M)
    text = text[: m.start()] + block + text[m.end():]
    header = (
        f"# mesh-remediation {version}, {arch}: packaged by scripts/release. The functions are the\n"
        f"# zips in functions/; deploy with `sam deploy --guided` (see samconfig.toml), no build.\n"
    )
    return header + text


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--version", required=True)
    p.add_argument("--arch", required=True, choices=["arm64", "x86_64"])
    p.add_argument("--binaries", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    a = p.parse_args()
    top = f"mesh-remediation-{a.version}-{a.arch}/"
    with zipfile.ZipFile(a.out, "w") as z:
        z.writestr(entry(top + "template.yaml", 0o644), packaged_template(a.version, a.arch))
        for f in FUNCTIONS:
            z.writestr(entry(f"{top}functions/{f}.zip", 0o644), function_zip(a.binaries / f))
        paths = [REPO / f for f in FILES] + sorted(p for p in (REPO / "deploy").rglob("*") if p.is_file())
        for path in paths:
            mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
            z.writestr(entry(top + path.relative_to(REPO).as_posix(), mode), path.read_bytes())


if __name__ == "__main__":
    main()
