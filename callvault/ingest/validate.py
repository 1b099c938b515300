"""Row validation for the COPY writer: one call log in, a ready-to-COPY row or a :class:`Rejected` out.

Pure and fast (it runs once per row on the ingest hot path): no I/O, and it never raises for bad data.
One bad row would abort a whole binary COPY, so every check Postgres would make on the way in is made
here first, and a failing row comes back as :class:`Rejected` with a one-line reason naming the field
and the fix, to be quarantined while the good rows land.

Policies (the choices a reader might wonder about):

* Input is a :class:`Call` or any mapping with exactly the column names (``id`` is refused: the
  database assigns it). Unknown keys are refused rather than dropped, so a typo cannot lose data.
* UUIDs: :class:`uuid.UUID`, or a string in a standard form (canonical, no hyphens, ``{...}``,
  ``urn:uuid:...``, any case). The oddities ``uuid.UUID()`` also lets through (spaces, ``+``, ``_``)
  are refused.
* Timestamps: aware :class:`datetime` or ISO 8601 string (``datetime.fromisoformat``, trailing ``Z``
  accepted), converted to UTC. A naive one is refused unless ``Rules(assume_utc=True)``, which treats
  it as UTC. A :class:`date`, or a date-only string, is refused (the time would be a guess).
* ``duration_sec`` is an ``int`` (not ``bool``, not ``float``) in ``0 .. 2**31-1``. When it is None and
  ``ended_at`` is given it is derived: ``round((ended_at - started_at).total_seconds())``. A given
  duration is not cross-checked against the timestamps.
* ``transcript``: no NUL, no unpaired surrogate, at most ``max_transcript_bytes`` UTF-8 bytes. Offsets
  in reasons are character (code point) indexes, i.e. ``text[offset]`` is the culprit.
* ``metadata`` is a mapping, returned pre-encoded as compact UTF-8 JSON bytes. It must serialise with
  the standard ``json`` rules, without a ``default=`` fallback, without NaN/Infinity, without
  ``\\u0000`` (jsonb refuses both) and without unpaired surrogates. Non-string keys are accepted the
  way ``json.dumps`` (and psycopg's ``Jsonb``) accept them: int/float/bool/None keys become strings
  (``1`` -> ``"1"``, ``None`` -> ``"null"``); other key types are refused.
* Check order: input type, unknown and missing fields, then the fields in column order, and the live
  partition range last: a row refused for its range is expected to be replayed unchanged once the
  partition exists, so that reason is only given to rows that are otherwise valid. First failure wins.

:func:`raw_json` is the quarantine's copy of the input (:mod:`callvault.ingest.rawform`): each field as
its own faithful JSON value, and what JSON cannot hold as sent in a tagged form marked as not the
original, so that replay never lands a value the producer did not send (see its docstring).
"""

from __future__ import annotations

import difflib
import json
import re
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from uuid import UUID

from callvault.columns import WRITTEN, Column
from callvault.errors import InvalidSetting
from callvault.ingest.call import Call as Call  # re-exported: the value validate() judges
from callvault.ingest.rawform import encode
from callvault.plan import PartitionInfo

COLUMNS: tuple[str, ...] = WRITTEN  # what a producer sends, in COPY order (callvault.columns)
# Binary COPY types, column by column (for psycopg's ``copy.set_types``).
PG_TYPES: tuple[str, ...] = ("uuid", "uuid", "timestamptz", "timestamptz", "int4", "text", "jsonb")

# TOAST would store up to 1 GB, but one huge transcript stalls the whole batch it travels in (and the
# memory of everything that buffers it); a real call transcript is tens of KB. Configurable per writer.
DEFAULT_MAX_TRANSCRIPT_BYTES = 1024 * 1024

INT4_MAX = 2**31 - 1

# (tenant_id, call_id, started_at, ended_at, duration_sec, transcript, metadata JSON bytes, *extras)
Row = tuple[Any, ...]

_FIELDS = frozenset(COLUMNS)
_REQUIRED = ("tenant_id", "call_id", "started_at")
_UUID_TEXT = re.compile(r"(?:urn:uuid:)?(\{)?[0-9A-Fa-f]+(?:-[0-9A-Fa-f]+)*(?(1)\})")
# A JSON \u0000 escape whose backslash is not itself escaped (``"\\u0000"`` is a backslash and "u0000").
_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
_SHOW_MAX = 60


@dataclass(frozen=True, slots=True)
class Rejected:
    """A row that must not go to COPY: the original input, unchanged, and why (one line)."""

    raw: object
    reason: str


def _aware_utc(ts: datetime, what: str) -> datetime:
    if not isinstance(ts, datetime) or ts.tzinfo is None or ts.utcoffset() is None:
        raise InvalidSetting(f"{what} {ts!r} is not a timezone-aware datetime: give partition bounds with a timezone")
    return ts.astimezone(UTC)


class LiveRange:
    """The started_at values the table can hold right now: the union of its attached (non-default) partitions.

    Built from ``[start, end)`` bounds (aware datetimes; adjacent and overlapping ones are merged, empty
    ones ignored). :meth:`reason` is O(log n): a bisect over the sorted, disjoint starts.
    """

    __slots__ = ("_ends", "_starts")

    def __init__(self, bounds: Iterable[tuple[datetime, datetime]]) -> None:
        spans = sorted(
            (_aware_utc(start, "partition start"), _aware_utc(end, "partition end")) for start, end in bounds
        )
        starts: list[datetime] = []
        ends: list[datetime] = []
        for start, end in spans:
            if start >= end:
                continue  # empty range: holds nothing
            if ends and start <= ends[-1]:
                if end > ends[-1]:
                    ends[-1] = end
            else:
                starts.append(start)
                ends.append(end)
        self._starts = starts
        self._ends = ends

    @classmethod
    def from_partitions(cls, parts: Iterable[PartitionInfo]) -> LiveRange:
        """From catalog partitions: the default partition and open-ended (MINVALUE/MAXVALUE) ones are skipped."""
        return cls((p.start, p.end) for p in parts if not p.is_default and p.start is not None and p.end is not None)

    @property
    def oldest(self) -> datetime | None:
        """Start of the oldest partition (UTC), None when there is none."""
        return self._starts[0] if self._starts else None

    @property
    def horizon(self) -> datetime | None:
        """End of the newest partition (UTC, exclusive), None when there is none."""
        return self._ends[-1] if self._ends else None

    @property
    def spans(self) -> tuple[tuple[datetime, datetime], ...]:
        """The merged, sorted ``[start, end)`` ranges."""
        return tuple(zip(self._starts, self._ends, strict=True))

    def __contains__(self, ts: object) -> bool:
        return isinstance(ts, datetime) and self.reason(ts) is None

    def __repr__(self) -> str:
        return f"LiveRange({[(s.isoformat(), e.isoformat()) for s, e in self.spans]!r})"

    def reason(self, ts: datetime) -> str | None:
        """None when a partition holds ``ts`` (aware); otherwise why not, and what to do."""
        starts = self._starts
        i = bisect_right(starts, ts) - 1
        if i >= 0 and ts < self._ends[i]:
            return None
        at = f"started_at {ts.astimezone(UTC).isoformat()}"
        if not starts:
            return f"{at} cannot be stored, the table has no partitions: run `callvault init`"
        if i < 0:
            return (
                f"{at} is before the oldest partition ({starts[0].isoformat()}): "
                "older than retention, archive it instead"
            )
        if i == len(starts) - 1:
            return (
                f"{at} is beyond the premake horizon ({self._ends[-1].isoformat()}): "
                "run `callvault maintain` (or raise --premake), then `callvault quarantine replay`"
            )
        return (
            f"{at} falls in a gap between partitions ({self._ends[i].isoformat()} to {starts[i + 1].isoformat()}): "
            "create the partition, then `callvault quarantine replay`"
        )


# LiveRange.reason's texts. validate gives them last, so only to rows that are otherwise valid.
_RANGE_REASON = re.compile(
    r"started_at \d{4,}-\d\d-\d\dT[0-9:.]+\+00:00 (?:cannot be stored, the table has no partitions|"
    r"is before the oldest partition|is beyond the premake horizon|falls in a gap between partitions)"
)


def is_range_reason(reason: str) -> bool:
    """``reason`` is one :meth:`LiveRange.reason` gives: the row was valid, only its partition was missing."""
    return _RANGE_REASON.match(reason) is not None


@dataclass(frozen=True, slots=True)
class Rules:
    """How :func:`validate` judges rows: transcript size limit, naive-timestamp policy, live partition range.

    ``assume_utc=False`` refuses naive timestamps (with a reason telling how to fix them); ``True`` treats
    them as UTC. ``live=None`` skips the partition-range check.
    """

    max_transcript_bytes: int = DEFAULT_MAX_TRANSCRIPT_BYTES
    assume_utc: bool = False
    live: LiveRange | None = None
    extras: tuple[Column, ...] = ()  # the table's own columns (callvault.columns.Shape.extras), in COPY order

    def __post_init__(self) -> None:
        limit = self.max_transcript_bytes
        if type(limit) is not int or limit < 1:
            raise InvalidSetting(f"invalid max_transcript_bytes {limit!r}: use a positive number of bytes")

    @property
    def fields(self) -> tuple[str, ...]:
        """The fields a call may have: callvault's, then the table's own columns."""
        return COLUMNS + tuple(c.name for c in self.extras)


_DEFAULT_RULES = Rules()


class _Invalid(Exception):
    """Internal: the reason a row is refused (never escapes :func:`validate`)."""


def _type_name(value: object) -> str:
    return type(value).__name__


def _show(text: str) -> str:
    """A string for a one-line reason: quoted, escaped, cut short."""
    if len(text) > _SHOW_MAX:
        return f"{text[:_SHOW_MAX]!r}... ({len(text)} characters)"
    return repr(text)


def _key_name(key: object) -> str:
    if isinstance(key, str):
        return str.__str__(key)
    try:
        return str(key)
    except Exception:
        return f"<{_type_name(key)}>"


def _unknown_fields(call: Mapping[Any, Any], fields: tuple[str, ...] = COLUMNS) -> str:
    names = [_key_name(k) for k in call if k not in fields]
    shown = ", ".join(_show(n) for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    hints = []
    for name in names[:5]:
        if name == "id":
            hints.append("id is assigned by the database: leave it out")
        else:
            close = difflib.get_close_matches(name.lower(), fields, n=1, cutoff=0.7)
            if close:
                hints.append(f"did you mean {close[0]!r} for {_show(name)}?")
    hint = "; ".join([*hints, f"fields: {', '.join(fields)}"])
    return f"unknown field{'s' if len(names) > 1 else ''} {shown} ({hint})"


def _missing(values: tuple[object, object, object]) -> str:
    names = [name for name, value in zip(_REQUIRED, values, strict=True) if value is None]
    return f"missing required field{'s' if len(names) > 1 else ''} {', '.join(names)}"


def _uuid(value: object, field: str) -> UUID:
    if isinstance(value, str):
        if _UUID_TEXT.fullmatch(value):
            try:
                return UUID(value)
            except ValueError:
                pass
        raise _Invalid(f"{field} {_show(value)} is not a UUID: use e.g. 0f8fad5b-d9cb-469f-a165-70867728950e")
    if isinstance(value, UUID):
        return UUID(int=value.int)  # a subclass, as a plain UUID
    raise _Invalid(f"{field} must be a UUID or a UUID string, got {_type_name(value)}")


def _date_only(field: str, day: date, shown: str) -> _Invalid:
    return _Invalid(
        f"{field} {shown} is a date without a time: give a timestamp with a timezone, e.g. {day.isoformat()}T00:00:00Z"
    )


def _timestamp(value: object, field: str, assume_utc: bool) -> datetime:
    """``value`` as an aware UTC datetime, or :class:`_Invalid`."""
    if isinstance(value, datetime):
        ts = value
    elif isinstance(value, str):
        try:
            if "\x00" in value:  # CPython 3.11's parser stops at a NUL and ignores the rest
                raise ValueError(value)
            ts = datetime.fromisoformat(value)
        except ValueError:
            raise _Invalid(
                f"{field} {_show(value)} is not an ISO 8601 timestamp: use e.g. 2026-05-04T12:30:00Z"
            ) from None
        if len(value) <= 10:  # every form with a time part is longer than "2026-05-04"
            raise _date_only(field, ts.date(), _show(value))
    elif isinstance(value, date):
        raise _date_only(field, value, repr(value.isoformat()))
    else:
        raise _Invalid(f"{field} must be a datetime or an ISO 8601 string, got {_type_name(value)}")
    tz = ts.tzinfo
    if tz is None or ts.utcoffset() is None:
        if not assume_utc:
            raise _Invalid(
                f"{field} {ts.isoformat()} has no timezone: attach one (tzinfo=UTC, or Z/+00:00 in the string), "
                "or use Writer(assume_utc=True) to treat naive times as UTC"
            )
        ts = ts.replace(tzinfo=UTC)
    elif tz is not UTC:
        try:
            ts = ts.astimezone(UTC)
        except (OverflowError, ValueError):
            raise _Invalid(f"{field} {ts.isoformat()} is out of range once converted to UTC") from None
    if type(ts) is not datetime:  # a subclass (pendulum, pandas...): a plain datetime for the COPY dumper
        ts = datetime(ts.year, ts.month, ts.day, ts.hour, ts.minute, ts.second, ts.microsecond, UTC)
    return ts


def _duration(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        got = f"{_type_name(value)} {value!r}" if isinstance(value, bool | float) else _type_name(value)
        raise _Invalid(f"duration_sec must be an int number of seconds, got {got}")
    n = int(value)
    if n < 0:
        raise _Invalid(f"duration_sec {n} is negative: give 0 or more seconds")
    if n > INT4_MAX:
        raise _Invalid(f"duration_sec {n} is over {INT4_MAX}, the most the integer column holds")
    return n


def _transcript(value: object, limit: int) -> str:
    """The slow path: non-ASCII text (or not a str at all)."""
    if not isinstance(value, str):
        hint = ": decode it first" if isinstance(value, bytes | bytearray) else ""
        raise _Invalid(f"transcript must be a str, got {_type_name(value)}{hint}")
    text = str.__str__(value)
    if "\x00" in text:
        raise _nul(text)
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as e:
        raise _Invalid(
            f"transcript contains an unpaired surrogate at offset {e.start} (invalid UTF-8): "
            "decode the source with errors='replace', or strip it"
        ) from None
    if size > limit:
        raise _too_big(size, limit)
    return text


def _nul(text: str) -> _Invalid:
    return _Invalid(
        f"transcript contains a NUL byte at offset {text.index(chr(0))}: "
        "Postgres text cannot store it; strip or replace it"
    )


def _too_big(size: int, limit: int) -> _Invalid:
    return _Invalid(f"transcript is {size} bytes; the limit is {limit} (Writer(max_transcript_bytes=...))")


def _json_default(value: object) -> object:
    raise TypeError(f"Object of type {_type_name(value)} is not JSON serializable")


def _make_encoder() -> Callable[[object], str]:
    """Compact, non-ASCII, NaN-refusing ``json.dumps`` without its per-call setup (about 2x faster)."""
    try:
        from json.encoder import c_make_encoder  # type: ignore[attr-defined]

        # No circular-reference markers: a cycle ends in RecursionError instead, which is handled.
        encode = c_make_encoder(
            None, _json_default, json.encoder.encode_basestring, None, ":", ",", False, False, False
        )

        def fast(obj: object) -> str:
            return "".join(encode(obj, 0))

        fast({"probe": [1, 2.5, None, True, "\u00e9"]})
        return fast
    except Exception:  # another Python: the public, slower spelling
        return json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


_encode_json = _make_encoder()


def _as_dict(value: object) -> dict[Any, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str | bytes | bytearray):
        raise _Invalid(f"metadata must be a mapping (a JSON object), got {_type_name(value)}; pass json.loads(text)")
    raise _Invalid(f"metadata must be a mapping (a JSON object), got {_type_name(value)}")


def _metadata_error(e: Exception) -> _Invalid:
    if isinstance(e, RecursionError):
        return _Invalid("metadata is nested too deeply (or contains itself) to be stored as JSON")
    if isinstance(e, ValueError) and str(e).startswith("Out of range float"):
        return _Invalid("metadata contains NaN or Infinity: jsonb cannot store them; use null or a string")
    return _Invalid(f"metadata is not JSON-serialisable: {e}; convert such values first (str(), isoformat())")


_INT_RANGE = {"int2": 2**15, "int4": 2**31, "int8": 2**63}


def _extra(col: Column, value: object, assume_utc: bool) -> object:
    """One of the table's own columns, checked the way Postgres would (None stays None unless NOT NULL)."""
    name, kind = col.name, col.copy
    if value is None:
        if col.not_null:
            raise _Invalid(f"{name} is required (the column is NOT NULL)")
        return None
    if kind == "text":
        if not isinstance(value, str):
            raise _Invalid(f"{name} must be a str, got {_type_name(value)}")
        text = str.__str__(value)
        if "\x00" in text:
            raise _Invalid(f"{name} contains a NUL character: text columns cannot store it; strip it")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise _Invalid(f"{name} contains an unpaired surrogate (invalid UTF-8): strip or replace it") from None
        limit = col.pg.partition("(")[2].rstrip(")")
        if limit.isdigit() and len(text) > int(limit):
            raise _Invalid(f"{name} is {len(text)} characters, over the {limit} its column ({col.pg}) holds")
        return text
    if kind in _INT_RANGE:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"{name} must be an int ({col.pg}), got {_type_name(value)}")
        bound = _INT_RANGE[kind]
        if not -bound <= int(value) < bound:
            raise _Invalid(f"{name} {int(value)} is out of range for its column ({col.pg})")
        return int(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise _Invalid(f"{name} must be a bool, got {_type_name(value)}")
        return value
    if kind in ("float4", "float8"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Invalid(f"{name} must be a number ({col.pg}), got {_type_name(value)}")
        return float(value)
    if kind == "numeric":
        import decimal

        if isinstance(value, bool) or not isinstance(value, int | float | decimal.Decimal | str):
            raise _Invalid(f"{name} must be a number ({col.pg}), got {_type_name(value)}")
        try:
            number = decimal.Decimal(str(value))
        except decimal.InvalidOperation:
            raise _Invalid(f"{name} {_show(str(value))} is not a number ({col.pg})") from None
        if not number.is_finite():
            raise _Invalid(f"{name} {_show(str(value))} is not a finite number ({col.pg})")
        return number
    if kind == "date":
        if isinstance(value, datetime) or not isinstance(value, date | str):
            raise _Invalid(f"{name} must be a date or an ISO 8601 date string, got {_type_name(value)}")
        if isinstance(value, str):
            try:
                return date.fromisoformat(value)
            except ValueError:
                raise _Invalid(f"{name} {_show(value)} is not an ISO 8601 date: use e.g. 2026-05-04") from None
        return value
    if kind == "timestamptz":
        return _timestamp(value, name, assume_utc)
    if kind == "uuid":
        return _uuid(value, name)
    # jsonb: any JSON value, pre-encoded
    try:
        js = _encode_json(value)
    except (TypeError, ValueError, RecursionError) as e:
        raise _Invalid(f"{name}: {_metadata_error(e)}") from None
    if "\\u0000" in js and _JSON_NUL.search(js):
        raise _Invalid(f"{name} contains a NUL character (\\u0000) in a string: jsonb cannot store it; strip it")
    try:
        return js.encode("utf-8")
    except UnicodeEncodeError:
        raise _Invalid(f"{name} contains an unpaired surrogate (invalid UTF-8) in a string: strip it") from None


def _extras(call: object, rules: Rules) -> tuple[object, ...]:
    """The values of the table's own columns, in COPY order (from a mapping's keys or ``Call.extra``)."""
    if isinstance(call, Mapping):
        get = call.get
    else:
        given = getattr(call, "extra", None) or {}
        unknown = [k for k in given if k not in rules.fields[len(COLUMNS) :]]
        if unknown:
            raise _Invalid(_unknown_fields(dict.fromkeys(unknown), rules.fields))
        get = given.get
    return tuple(_extra(c, get(c.name), rules.assume_utc) for c in rules.extras)


def validate(call: Call | Mapping[str, Any], rules: Rules = _DEFAULT_RULES) -> Row | Rejected:
    """``call`` as a row ready for binary COPY (columns :data:`COLUMNS`), or :class:`Rejected` with why.

    Never raises for bad data. See the module docstring for the rules and their order.
    """
    try:
        kind = type(call)
        if kind is Call or (kind is not dict and isinstance(call, Call)):
            c: Any = call
            tenant: Any = c.tenant_id
            call_id: Any = c.call_id
            started: Any = c.started_at
            ended: Any = c.ended_at
            duration: Any = c.duration_sec
            text: Any = c.transcript
            meta: Any = c.metadata
        elif kind is dict or isinstance(call, Mapping):
            m: Any = call
            if not _FIELDS.issuperset(m) and not (rules.extras and set(rules.fields).issuperset(m)):
                raise _Invalid(_unknown_fields(m, rules.fields))
            get = m.get
            tenant = get("tenant_id")
            call_id = get("call_id")
            started = get("started_at")
            ended = get("ended_at")
            duration = get("duration_sec")
            text = get("transcript")
            meta = get("metadata")
        else:
            raise _Invalid(f"expected a callvault Call or a mapping, got {_type_name(call)}")

        if tenant is None or call_id is None or started is None:
            raise _Invalid(_missing((tenant, call_id, started)))
        if type(tenant) is not UUID:
            tenant = _uuid(tenant, "tenant_id")
        if type(call_id) is not UUID:
            call_id = _uuid(call_id, "call_id")

        if type(started) is not datetime or started.tzinfo is not UTC:
            started = _timestamp(started, "started_at", rules.assume_utc)
        if ended is not None:
            if type(ended) is not datetime or ended.tzinfo is not UTC:
                ended = _timestamp(ended, "ended_at", rules.assume_utc)
            if ended < started:
                raise _Invalid(
                    f"ended_at {ended.isoformat()} is before started_at {started.isoformat()}: "
                    "swap them, or fix the clock that produced them"
                )

        if duration is None:
            if ended is not None:
                duration = round((ended - started).total_seconds())
                if duration > INT4_MAX:
                    raise _Invalid(
                        f"duration_sec derived from ended_at - started_at is {duration} seconds, over {INT4_MAX} "
                        "(the most the integer column holds): check ended_at, or pass duration_sec"
                    )
        elif type(duration) is not int or not 0 <= duration <= INT4_MAX:
            duration = _duration(duration)

        if text is not None:
            if type(text) is str and text.isascii():  # the common case: one byte per character
                if "\x00" in text:
                    raise _nul(text)
                if len(text) > rules.max_transcript_bytes:
                    raise _too_big(len(text), rules.max_transcript_bytes)
            else:
                text = _transcript(text, rules.max_transcript_bytes)

        blob: bytes | None = None
        if meta is not None:
            if type(meta) is not dict:
                meta = _as_dict(meta)
            try:
                js = _encode_json(meta)
            except (TypeError, ValueError, RecursionError) as e:
                raise _metadata_error(e) from None
            if "\\u0000" in js and _JSON_NUL.search(js):
                raise _Invalid(
                    "metadata contains a NUL character (\\u0000) in a string: jsonb cannot store it; strip it"
                )
            try:
                blob = js.encode("utf-8")
            except UnicodeEncodeError:
                raise _Invalid(
                    "metadata contains an unpaired surrogate (invalid UTF-8) in a string: strip or replace it"
                ) from None

        extra = _extras(call, rules) if rules.extras else ()
        if not rules.extras and isinstance(call, Call) and call.extra:
            raise _Invalid(_unknown_fields(dict.fromkeys(call.extra), rules.fields))

        live = rules.live
        if live is not None:
            why = live.reason(started)
            if why is not None:
                raise _Invalid(why)
    except _Invalid as e:
        return Rejected(call, str(e))
    if extra:
        return (tenant, call_id, started, ended, duration, text, blob, *extra)
    return (tenant, call_id, started, ended, duration, text, blob)


def raw_json(obj: object) -> str:
    """The quarantine's copy of an input (``callvault.quarantine.raw``): ASCII JSON text. Never raises.

    Encoded by :func:`callvault.ingest.rawform.encode` (format ``callvault/2``, docs/ingest.md): every
    field the input holds is kept as its own faithful JSON value, and a value JSON cannot hold as sent
    is stored as a tag that marks it as not the original.

    Contract: ``rawform.decode(raw_json(x))`` either carries markers, and then ``validate(x)`` refused
    ``x``; or it carries none, and ``validate`` gives its value the same verdict and row as ``x``, and the
    same reason up to the container type a reason names (a tuple reads back as a list, a mapping as a dict).
    """
    return encode(obj).text
