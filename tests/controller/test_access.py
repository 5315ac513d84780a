"""controller/core/access.py: the access rules as a table, and the token file format."""

from __future__ import annotations

import pathlib

import pytest

from xpuctl.controller import cli, config
from xpuctl.controller.core import access

TOKEN = "s3cret-token-of-bob"
POLICY = access.Policy(
    enforced=True,
    operator_identities=frozenset({"alice"}),
    operator_tokens=access.parse_tokens(f"bob {TOKEN}\n", "t"),
)
NODE = frozenset({"node-a"})


@pytest.mark.parametrize(
    ("policy", "method", "identities", "token", "code"),
    [
        (access.Policy(), "SetPowerBudget", frozenset(), None, None),  # not enforced: plaintext lab
        (POLICY, "SetPowerBudget", frozenset({"alice"}), None, None),
        (POLICY, "SetPowerBudget", NODE, TOKEN, None),
        (POLICY, "SetPowerBudget", NODE, None, "PERMISSION_DENIED"),
        (POLICY, "SetPowerBudget", frozenset(), None, "UNAUTHENTICATED"),
        (POLICY, "SetPowerBudget", NODE, "not-the-token-at-all", "UNAUTHENTICATED"),
        (POLICY, "SetPowerBudget", NODE, "", "UNAUTHENTICATED"),  # `authorization: Basic ...`
        (POLICY, "SomeFutureMethod", NODE, None, "PERMISSION_DENIED"),  # unknown = mutating
        (POLICY, "GetSummary", NODE, None, "PERMISSION_DENIED"),
        (access.Policy(enforced=True, open_reads=True), "GetSummary", NODE, None, None),
        (access.Policy(enforced=True, open_reads=True), "Cordon", NODE, None, "PERMISSION_DENIED"),
    ],
)
def test_check_call(
    policy: access.Policy, method: str, identities: frozenset[str], token: str | None, code: str | None
) -> None:
    denial = access.check_call(policy, method, identities, token)
    assert (denial.code if denial else None) == code
    if denial is not None:
        assert method in denial.message and "operator" in denial.message


def test_operator_names_the_credential() -> None:
    assert access.operator(POLICY, frozenset({"alice", "node-a"}), None) == "cert:alice"
    assert access.operator(POLICY, NODE, TOKEN) == "token:bob"
    assert access.operator(POLICY, NODE, None) is None


def test_check_node() -> None:
    assert access.check_node(POLICY, "node-a", NODE) is None
    assert access.check_node(access.Policy(), "node-b", frozenset()) is None
    denial = access.check_node(POLICY, "node-b", NODE)
    assert denial is not None and denial.code == "PERMISSION_DENIED" and "node-a" in denial.message


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("bob\n", 1, "1 field(s)"),
        ("# c\n\nbob short\n", 3, "shorter than 16"),
        (f"bob {TOKEN}\ncarol {TOKEN}  # same\n", 2, "also 'bob'"),
    ],
)
def test_bad_token_files(text: str, line: int, problem: str) -> None:
    with pytest.raises(access.TokenFileError) as exc:
        access.parse_tokens(text, "tokens")
    assert exc.value.line_no == line and problem in str(exc.value)


def test_tokens_are_kept_as_digests() -> None:
    assert TOKEN.encode() not in b"".join(POLICY.operator_tokens)
    assert list(POLICY.operator_tokens.values()) == ["bob"]


@pytest.mark.parametrize(
    ("toml", "path"),
    [
        ('[tls]\ncert_file = "c.pem"\n', "missing client_ca_file, key_file - at $.tls"),
        ('[auth]\noperator_tokens_file = "t"\n', "need [tls]"),
        ("[auth]\nopen_reads = 3\n", "$.auth.open_reads"),
    ],
)
def test_bad_security_config_exits_78(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], toml: str, path: str
) -> None:
    f = tmp_path / "c.toml"
    f.write_text(toml)
    with pytest.raises(config.ConfigError):
        config.load(f, {})
    assert cli.main(["validate", "--config", str(f)]) == 78
    assert path in capsys.readouterr().err


def test_a_bad_token_file_stops_serve(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("bob short\n")
    f = tmp_path / "c.toml"
    f.write_text(
        f'[tls]\ncert_file = "a"\nkey_file = "b"\nclient_ca_file = "c"\n[auth]\noperator_tokens_file = "{tokens}"\n'
    )
    assert cli.main(["--log-format", "text", "serve", "--listen", "127.0.0.1:0", "--config", str(f)]) == 78
    err = capsys.readouterr().err
    assert "operator_tokens_file, line 1" in err and "shorter than 16" in err


def test_a_missing_certificate_stops_serve(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "c.toml"
    f.write_text(f'[tls]\ncert_file = "{tmp_path}/nope.pem"\nkey_file = "b"\nclient_ca_file = "c"\n')
    assert cli.main(["--log-format", "text", "serve", "--listen", "127.0.0.1:0", "--config", str(f)]) == 78
    err = capsys.readouterr().err
    assert "server certificate" in err and "nope.pem" in err and "cannot read it" in err
