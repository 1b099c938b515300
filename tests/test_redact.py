"""Redaction at ingest: the built-in redactors (pure, fast unit tests) and both writers rewriting calls
before anything is written or quarantined, counted in the metrics."""

from __future__ import annotations

from uuid import uuid4

import psycopg
import pytest
from prometheus_client import CollectorRegistry

from callvault.ingest import AsyncWriter, Call, Writer
from callvault.ingest.redact import Redaction, as_redaction, luhn, redact_text
from tests.helpers import make_calls, run
from tests.test_twins import Twin


@pytest.mark.parametrize(
    ("text", "want", "kinds"),
    [
        ("mail ann.lee@example.co.uk today", "mail [EMAIL] today", {"email": 1}),
        ("call +1 (555) 010-2030 now", "call [PHONE] now", {"phone": 1}),
        ("my number is 0171 946 0958.", "my number is [PHONE].", {"phone": 1}),
        ("card 4111 1111 1111 1111 exp 12/29", "card [CARD] exp 12/29", {"card": 1}),
        ("card 4111-1111-1111-1111", "card [CARD]", {"card": 1}),
        ("ssn 123-45-6789 ok", "ssn [NATIONAL_ID] ok", {"national_id": 1}),
        ("NI number AB 12 34 56 C.", "NI number [NATIONAL_ID].", {"national_id": 1}),
        ("order 12345 at 3 pm, 2 items", "order 12345 at 3 pm, 2 items", {}),
        ("no pii here at all", "no pii here at all", {}),
        ("x@y and @handle", "x@y and @handle", {}),
        ("", "", {}),
    ],
)
def test_builtin_redactors(text: str, want: str, kinds: dict[str, int]) -> None:
    counts: dict[str, int] = {}
    assert redact_text(text, counts) == want
    assert counts == kinds


def test_luhn_tells_cards_from_other_long_numbers() -> None:
    assert luhn("4111111111111111") and luhn("79927398713")
    assert not luhn("4111111111111112")
    counts: dict[str, int] = {}
    assert redact_text("ref 4111 1111 1111 1112", counts) == "ref 4111 1111 1111 1112" and counts == {}


def test_redaction_of_mappings_calls_and_metadata_keys() -> None:
    r = Redaction(
        metadata_keys=("caller_email", "notes"), extra=(lambda s: (s.replace("secret", "[X]"), s.count("secret")),)
    )
    counts: dict[str, int] = {}
    given = {"transcript": "a secret: ann@example.com", "metadata": {"caller_email": "bob@example.org", "n": 5}}
    out = r.call(given, counts)
    assert out["transcript"] == "a [X]: [EMAIL]" and out["metadata"] == {"caller_email": "[EMAIL]", "n": 5}
    assert given["transcript"] == "a secret: ann@example.com", "the caller's object is left as it was"
    assert counts == {"email": 2, "custom": 1}
    call = Call(tenant_id=uuid4(), call_id=uuid4(), started_at=make_calls(1)[0]["started_at"],
                transcript="+44 20 7946 0958")  # fmt: skip
    assert r.call(call, {}).transcript == "[PHONE]"
    assert as_redaction(None) is None and as_redaction(False) is None
    assert as_redaction(True) == Redaction() and as_redaction(["k"]) == Redaction(metadata_keys=("k",))


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_writers_redact_before_writing_and_quarantining(dsn: str, kind: str) -> None:
    run("init", "--dsn", dsn)
    twin, registry = Twin(kind), CollectorRegistry()
    calls = make_calls(50, tenants=2)
    calls[0] = dict(calls[0], transcript="reach me at ann@example.com or +1 555 010 2030",
                    metadata={"caller_email": "bob@example.org"})  # fmt: skip
    bad = dict(calls[1], call_id=uuid4(), duration_sec=-5, transcript="card 4111 1111 1111 1111")  # quarantined
    args = {"metrics": registry, "redact": ["caller_email"]}
    if kind == "sync":
        w: object = Writer(dsn, **args)
    else:
        w = AsyncWriter(dsn, **args)
        twin(w.open())  # type: ignore[attr-defined]
    twin(w.write(calls[0]))  # type: ignore[attr-defined]
    twin(w.write_many([*calls[2:], bad]))  # type: ignore[attr-defined]
    twin(w.close())  # type: ignore[attr-defined]
    twin.close()
    with psycopg.connect(dsn) as c:
        stored = c.execute(
            "SELECT transcript, metadata FROM call_logs WHERE call_id = %s", (calls[0]["call_id"],)
        ).fetchone()
        raw = [r[0] for r in c.execute("SELECT raw FROM callvault.quarantine")]
    assert stored == ("reach me at [EMAIL] or [PHONE]", {"caller_email": "[EMAIL]"})
    assert len(raw) == 1 and "4111" not in raw[0] and "[CARD]" in raw[0], "quarantined already redacted"
    got = {s.labels["kind"]: s.value for m in registry.collect() if m.name == "callvault_writer_redactions"
           for s in m.samples if s.name.endswith("_total")}  # fmt: skip
    assert got["email"] == 2 and got["phone"] == 1 and got["card"] == 1 and got["national_id"] == 0


# ---------------------------------------------------------------- the archive's subject filter (pure)


def test_subject_filter_has_no_false_negatives_and_few_false_positives() -> None:
    from callvault.privacy.index import build, may_contain

    secret = b"k" * 32
    members = [f"+1555{i:07d}" for i in range(5_000)]
    blob = build(members, secret)
    assert all(may_contain(blob, m, secret) for m in members)
    others = [f"+1666{i:07d}" for i in range(20_000)]
    rate = sum(may_contain(blob, o, secret) for o in others) / len(others)
    assert rate < 0.02, rate  # built for 1 %
    assert len(blob) < 8_000, "about 9.6 bits a subject"
    assert not all(may_contain(blob, m, b"x" * 32) for m in members[:50]), "another key reads another filter"
    assert b"+1555" not in blob
    assert may_contain(b"garbage", "anything", secret), "an unreadable filter says maybe"
    empty = build([], secret)
    assert not may_contain(empty, members[0], secret)
