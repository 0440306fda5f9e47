"""The SigV4 reference vector of the AMP query (shared/src/verify/sign.rs) is botocore's.

The Rust unit test `an_amp_query_is_signed_as_botocore_signs_it` checks the functions sign
exactly so; this test computes the same request's signature with botocore (what the AWS CLI
and SDKs for Python use) at the same frozen time, so the constant cannot drift from it.
"""

from __future__ import annotations

import datetime
import re
from pathlib import Path
from unittest import mock

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

SIGN_RS = Path(__file__).resolve().parents[2] / "shared" / "src" / "verify" / "sign.rs"


def rust_constant(name: str) -> str:
    source = SIGN_RS.read_text()
    match = re.search(rf'const {name}: &str =\s*"([^"]*)";', source)
    assert match, f"{name} not found in {SIGN_RS}"
    return match.group(1)


def test_the_rust_vector_is_botocores_signature() -> None:
    credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "session-token-example")
    request = AWSRequest(
        method="POST",
        url=rust_constant("AMP_QUERY_URL"),
        data=rust_constant("AMP_QUERY_BODY"),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    frozen = datetime.datetime(2026, 12, 7, 23, 50, 0)
    with mock.patch("botocore.auth.get_current_datetime", return_value=frozen):
        SigV4Auth(credentials, "aps", "eu-west-1").add_auth(request)
    assert request.headers["Authorization"] == rust_constant("BOTOCORE_AUTHORIZATION")
