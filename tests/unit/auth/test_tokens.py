"""Role tokens: what verifies, what does not, and who may call which method."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import jwt
import pytest

from prognos.api.common.v1 import audit_pb2, info_pb2
from prognos.cli.tokens import parse_ttl
from prognos.core.auth import (
    Principal,
    generate_signing_key,
    issue_token,
    method_access,
    verify_token,
)
from prognos.core.errors import UnauthenticatedError

KEY = generate_signing_key()
HOUR = timedelta(hours=1)


def test_a_token_carries_its_subject_roles_issuer_and_expiry() -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    token = issue_token(KEY, "user:alice", ["approver", "auditor"], HOUR, now=now)

    principal = verify_token(KEY.public_key(), token)

    assert principal.subject == "user:alice"
    assert principal.roles == ("approver", "auditor")
    assert principal.issuer == "prognos"
    assert principal.expires_at == now + HOUR
    assert principal.token_id


def test_an_expired_token_is_refused() -> None:
    issued = datetime.now(UTC) - timedelta(hours=2)
    token = issue_token(KEY, "alice", ["erp"], HOUR, now=issued)

    with pytest.raises(UnauthenticatedError) as caught:
        verify_token(KEY.public_key(), token)

    assert caught.value.reason == "TOKEN_EXPIRED"


def test_a_token_signed_by_another_key_is_refused() -> None:
    token = issue_token(generate_signing_key(), "alice", ["admin"], HOUR)

    with pytest.raises(UnauthenticatedError) as caught:
        verify_token(KEY.public_key(), token)

    assert caught.value.reason == "TOKEN_INVALID"


def test_a_token_whose_roles_were_edited_is_refused() -> None:
    header, payload, signature = issue_token(KEY, "alice", ["auditor"], HOUR).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["roles"] = ["admin"]
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()

    with pytest.raises(UnauthenticatedError, match="not valid"):
        verify_token(KEY.public_key(), f"{header}.{forged_payload}.{signature}")


def test_a_token_of_another_issuer_is_refused() -> None:
    token = issue_token(KEY, "alice", ["admin"], HOUR, issuer="someone-else")

    with pytest.raises(UnauthenticatedError, match="not valid"):
        verify_token(KEY.public_key(), token)


def test_an_unsigned_token_is_refused() -> None:
    claims = {"sub": "alice", "roles": ["admin"], "iss": "prognos", "iat": 0, "exp": 4102444800}
    unsigned = jwt.encode(claims, key=None, algorithm="none")

    with pytest.raises(UnauthenticatedError, match="not valid"):
        verify_token(KEY.public_key(), unsigned)


def test_a_token_without_roles_is_refused() -> None:
    now = datetime.now(UTC)
    claims = {"sub": "alice", "iss": "prognos", "iat": now, "exp": now + HOUR}
    token = jwt.encode(claims, KEY, algorithm="EdDSA")

    with pytest.raises(UnauthenticatedError, match="no roles"):
        verify_token(KEY.public_key(), token)


@pytest.mark.parametrize(
    ("subject", "actor"), [("alice", "user:alice"), ("gateway:p7", "gateway:p7")]
)
def test_the_actor_names_the_kind_of_subject(subject: str, actor: str) -> None:
    assert Principal(subject, ("erp",)).actor == actor


def test_admin_may_call_anything_and_others_only_what_lists_them() -> None:
    assert Principal("a", ("admin",)).may_call([])
    assert Principal("a", ("erp",)).may_call(["erp", "gateway"])
    assert not Principal("a", ("erp",)).may_call(["auditor"])
    assert not Principal("a", ()).may_call(["auditor"])


def test_the_access_option_of_a_method_is_read_from_the_contracts() -> None:
    verify = audit_pb2.DESCRIPTOR.services_by_name["AuditService"].methods_by_name["VerifyChain"]
    get_info = info_pb2.DESCRIPTOR.services_by_name["InfoService"].methods_by_name["GetInfo"]

    audit_rule = method_access(f"/{verify.containing_service.full_name}/VerifyChain")
    info_rule = method_access(f"/{get_info.containing_service.full_name}/GetInfo")

    assert audit_rule.roles == {"auditor"} and audit_rule.known and not audit_rule.open
    assert info_rule.roles == {"gateway", "erp", "ml-engineer", "approver", "auditor"}


def test_an_unknown_method_is_admin_only_and_probes_are_open() -> None:
    unknown = method_access("/prognos.api.nothing.v1.Nowhere/Call")
    health = method_access("/grpc.health.v1.Health/Check")

    assert unknown.roles == frozenset() and not unknown.known and not unknown.open
    assert health.open


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("30m", 1800), ("12h", 43200), ("7d", 604800), ("5", 5)]
)
def test_durations_are_read_with_their_unit(text: str, seconds: int) -> None:
    assert parse_ttl(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "0h", "-1h", "12x", "h"])
def test_a_duration_that_is_not_positive_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="positive duration"):
        parse_ttl(text)
