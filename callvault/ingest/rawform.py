"""The quarantine's copy of a refused input (``callvault.quarantine.raw``): a faithful, documented encoding.

Pure, never raises, and iterative (no recursion per nesting level), so nothing a producer passes can
crash the writer or lose the other fields. The format, ``"$format": "callvault/2"`` (docs/ingest.md,
"The quarantine's encoding"):

* ``raw`` is ASCII JSON text: one object with ``"$format": "callvault/2"`` and the input's fields by name
  (a :class:`~callvault.ingest.validate.Call`, or a mapping whose keys are all strings not starting
  with ``$``). Any other input is kept whole under ``"$input"``.
* Each field is encoded on its own, so one field that cannot be encoded never costs the others.
* A value is stored as itself when its JSON form is exactly what the writer would make of it (and so
  what validation would judge the same way): JSON scalars, strings (NUL and lone surrogates survive as
  ``\\u`` escapes), lists/tuples as arrays, dicts with the writer's key coercion (``1`` -> ``"1"``), any
  mapping as the metadata object; a UUID in ``tenant_id``/``call_id`` as its string, a datetime or date
  in ``started_at``/``ended_at`` as its ``isoformat()``.
* Anything else is a **tag**: an object with exactly one member whose name starts with ``$``. Every tag
  but ``$literal`` marks a value that is *not* what the producer sent (a lossless encoding of it where
  one exists): ``$decimal``, ``$int_hex``, ``$float``, ``$bytes_b64``, ``$set``, ``$map``, ``$uuid``,
  ``$datetime``, ``$date``, ``$time``, ``$object``, ``$cycle``, ``$deep`` (see :data:`TAGS`).
  ``{"$literal": {...}}`` is the producer's own object that would read as a tag (one member, name
  starting with ``$``), taken literally.
* A field holding a tag is written with its first :data:`BOUND` levels as JSON and anything deeper
  as ``{"$deep": "<the JSON text of that subtree, same encoding>"}`` (lossless, and safe for any parser).

:func:`decode` reverses it: the input as validation should see it, plus every tag that marks a
value as not the original (``markers``). Replay lands nothing with a marker.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from json.encoder import encode_basestring_ascii
from typing import Any
from uuid import UUID

from callvault.columns import WRITTEN
from callvault.ingest.call import Call

FORMAT = "callvault/2"
LEGACY_TAGS = frozenset({"$repr", "$int_hex", "$bytes_b64"})  # what callvault/1 (no "$format") wrote
FORMAT_KEY = "$format"
INPUT_KEY = "$input"
LITERAL = "$literal"
BOUND = 32  # levels kept as JSON in a field that holds a tag; deeper subtrees become {"$deep": "..."}
REPR_MAX = 2000  # characters of repr() kept for an object without a JSON form
_PATH_MAX = 120

# What each tag stands for (a phrase for one-line reasons). Every tag marks "not the value sent".
TAGS: dict[str, str] = {
    "$decimal": "a Decimal (its str)",
    "$int_hex": "an int too long for JSON text (its hex)",
    "$float": "NaN or Infinity",
    "$bytes_b64": "bytes (base64)",
    "$set": "a set (its elements)",
    "$map": "a mapping JSON cannot hold (its [key, value] pairs)",
    "$uuid": "a UUID object (its string)",
    "$datetime": "a datetime object (its isoformat)",
    "$date": "a date object (its isoformat)",
    "$time": "a time object (its isoformat)",
    "$object": "an object with no JSON form (its type, and its fields or repr)",
    "$cycle": "a reference to a container that holds it",
    "$deep": f"the levels below the first {BOUND} of a field that holds a tag (as JSON text)",
    "$repr": "an older callvault's repr of the whole input",
}

# Contexts: how a row field's own value is judged by validation (nested values are always metadata-like).
_UUID, _TS, _META, _ANY, _ROOT = "uuid", "timestamp", "metadata", "any", "input"
# Values with a faithful text form: (type, the field context that takes that text, the tag elsewhere, the
# text). datetime before date (a datetime is a date).
_TEXT_FORMS: tuple[tuple[type, str, str, Callable[[Any], str]], ...] = (
    (UUID, _UUID, "$uuid", UUID.__str__),
    (datetime, _TS, "$datetime", datetime.isoformat),
    (date, _TS, "$date", date.isoformat),
)
FIELD_CONTEXT: dict[str, str] = {
    "tenant_id": _UUID, "call_id": _UUID, "started_at": _TS, "ended_at": _TS, "metadata": _META,
}  # fmt: skip
_CALL_FIELDS = WRITTEN  # callvault.columns


@dataclass(frozen=True, slots=True)
class Marker:
    """A value stored as a tag: where (``metadata["price"]``) and which tag (``$decimal``)."""

    path: str
    tag: str

    def describe(self) -> str:
        return f"{self.path} as {self.tag} ({TAGS.get(self.tag, 'a tag this version does not know')})"


@dataclass(frozen=True, slots=True)
class Encoded:
    text: str
    markers: tuple[Marker, ...]


@dataclass(frozen=True, slots=True)
class Decoded:
    """``value``: the input as validation should judge it; ``markers``: values that are not the original;
    ``legacy``: no ``$format`` (written by an older callvault); ``error``: raw could not be read at all."""

    value: object = None
    markers: tuple[Marker, ...] = ()
    legacy: bool = False
    error: str | None = None


def child_path(path: str, segment: str) -> str:
    """The path of a member (``segment`` is ``[<JSON key>]`` or ``[<index>]``), capped in length."""
    if len(path) < _PATH_MAX:
        return path + segment
    return path if path.endswith("...") else path + "..."


def describe(markers: tuple[Marker, ...] | list[Marker], limit: int = 3) -> str:
    shown = "; ".join(m.describe() for m in markers[:limit])
    more = f"; and {len(markers) - limit} more" if len(markers) > limit else ""
    return shown + more


# --- encoding ---------------------------------------------------------------------------------------------


def _type_name(value: object) -> str:
    kind = type(value)
    return f"{kind.__module__}.{kind.__qualname__}" if kind.__module__ != "builtins" else kind.__qualname__


def _safe_repr(value: object) -> str:
    try:
        text = repr(value)
    except Exception as exc:  # RecursionError included
        return f"<repr failed: {type(exc).__name__}>"
    return text if len(text) <= REPR_MAX else f"{text[:REPR_MAX]}... ({len(text)} characters)"


def _s(text: str) -> str:
    return str(encode_basestring_ascii(text))


def _tag(name: str, value_json: str) -> str:
    return '{"' + name + '":' + value_json + "}"


def _key(key: object) -> str | None:
    """A dict key as the writer's JSON encoder writes it (its coercion), or None when it refuses the key."""
    if isinstance(key, str):
        return str.__str__(key)
    if isinstance(key, float):
        return float.__repr__(key) if math.isfinite(key) else None
    if key is True or key is False or key is None:
        return {True: "true", False: "false", None: "null"}[key]
    if isinstance(key, int):
        try:
            return int.__repr__(key)
        except ValueError:  # longer than the interpreter's int-to-text limit
            return None
    return None


# A frame of the explicit stack: (items, closing text, id of the container, quiet).
# items yields (text before the child, child value, child path).
_Frame = tuple[Iterator[tuple[str, object, str]], str, int, bool]


class _Emitter:
    """JSON text for one value, without recursion. ``bound``: containers deeper than this become ``$deep``."""

    def __init__(self, bound: int | None, ancestors: dict[int, str] | None = None) -> None:
        self.bound = bound
        self.out: list[str] = []
        self.markers: list[Marker] = []
        self.ancestors: dict[int, str] = dict(ancestors or {})
        self.max_depth = 0

    def run(self, value: object, path: str, context: str) -> None:
        stack: list[_Frame] = []
        self._visit(value, path, context, stack, quiet=False)
        while stack:
            items, close, oid, quiet = stack[-1]
            nxt = next(items, None)
            if nxt is None:
                stack.pop()
                self.out.append(close)
                self.ancestors.pop(oid, None)
                continue
            before, child, cpath = nxt
            self.out.append(before)
            self._visit(child, cpath, _ANY, stack, quiet=quiet)

    def _mark(self, path: str, tag: str, quiet: bool) -> None:
        if not quiet:
            self.markers.append(Marker(path, tag))

    def _visit(self, v: object, path: str, context: str, stack: list[_Frame], *, quiet: bool) -> None:
        try:
            text = self._scalar(v, path, context, quiet)
            if text is None:
                self._open(v, path, context, stack, quiet)
            else:
                self.out.append(text)
        except Exception as exc:  # a hostile __iter__/__eq__/isoformat...: keep the type, say what failed
            self._mark(path, "$object", quiet)
            detail = '{"type":' + _s(_type_name(v)) + ',"error":' + _s(f"{type(exc).__name__}: {exc}"[:200]) + "}"
            self.out.append(_tag("$object", detail))

    def _scalar(self, v: object, path: str, context: str, quiet: bool) -> str | None:
        """JSON text for a value that needs no container frame; None for containers."""
        if v is None:
            return "null"
        if v is True:
            return "true"
        if v is False:
            return "false"
        if isinstance(v, str):
            return _s(str.__str__(v))
        if isinstance(v, int):
            try:
                return int.__repr__(v)
            except ValueError:
                self._mark(path, "$int_hex", quiet)
                return _tag("$int_hex", _s(hex(int(v))))
        if isinstance(v, float):
            if math.isfinite(v):
                return float.__repr__(v)
            self._mark(path, "$float", quiet)
            return _tag("$float", _s("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")))
        if isinstance(v, dict | list | tuple | set | frozenset) or (context == _META and isinstance(v, Mapping)):
            return None
        for kind, native, tag, text in _TEXT_FORMS:  # as text where the field takes it, else tagged
            if isinstance(v, kind):
                if context == native:
                    return _s(text(v))
                self._mark(path, tag, quiet)
                return _tag(tag, _s(text(v)))
        if isinstance(v, time):
            self._mark(path, "$time", quiet)
            return _tag("$time", _s(time.isoformat(v)))
        if isinstance(v, Decimal):
            self._mark(path, "$decimal", quiet)
            return _tag("$decimal", _s(str(v)))
        if isinstance(v, bytes | bytearray | memoryview):
            self._mark(path, "$bytes_b64", quiet)
            return _tag("$bytes_b64", _s(base64.b64encode(bytes(v)).decode("ascii")))
        if isinstance(v, Mapping) or (dataclasses.is_dataclass(v) and not isinstance(v, type)):
            return None
        self._mark(path, "$object", quiet)
        return _tag("$object", '{"type":' + _s(_type_name(v)) + ',"repr":' + _s(_safe_repr(v)) + "}")

    def _open(self, v: object, path: str, context: str, stack: list[_Frame], quiet: bool) -> None:
        oid = id(v)
        if oid in self.ancestors:
            self._mark(path, "$cycle", quiet)
            self.out.append(_tag("$cycle", _s(self.ancestors[oid])))
            return
        depth = len(stack)
        if self.bound is not None and depth >= self.bound:
            inner = _Emitter(None, self.ancestors)
            inner.run(v, path, context)
            self._mark(path, "$deep", quiet)
            self.out.append(_tag("$deep", _s("".join(inner.out))))
            return
        self.max_depth = max(self.max_depth, depth + 1)
        opening, items, close, tagged = self._container(v, path, context)
        if tagged:
            self._mark(path, tagged, quiet)
        self.out.append(opening)
        self.ancestors[oid] = path
        stack.append((items, close, oid, quiet or bool(tagged)))

    def _container(self, v: object, path: str, context: str) -> tuple[str, Iterator[tuple[str, object, str]], str, str]:
        """Opening text, members, closing text, and the tag it is stored as ("" when it is itself)."""
        if isinstance(v, list | tuple):
            seq = list(v)
            return "[", ((("," if i else ""), x, child_path(path, f"[{i}]")) for i, x in enumerate(seq)), "]", ""
        if isinstance(v, set | frozenset):
            seq = list(v)
            return '{"$set":[', ((("," if i else ""), x, path) for i, x in enumerate(seq)), "]}", "$set"
        if isinstance(v, dict) or (context == _META and isinstance(v, Mapping)):
            pairs = list(v.items())
            # a whole input's keys are field names: not coerced (validation names them as they are)
            keys = [(str.__str__(k) if isinstance(k, str) else None) if context == _ROOT else _key(k) for k, _ in pairs]
            if all(k is not None for k in keys):
                members = [(_s(k), x) for k, (_, x) in zip(keys, pairs, strict=True) if k is not None]
                literal = len(members) == 1 and keys[0] is not None and keys[0].startswith("$")
                items = (
                    (("," if i else "") + k + ":", x, child_path(path, f"[{k}]")) for i, (k, x) in enumerate(members)
                )
                return ('{"' + LITERAL + '":{' if literal else "{"), items, ("}}" if literal else "}"), ""
            return '{"$map":[', _pairs(pairs, path), ("]]}" if pairs else "]}"), "$map"
        if isinstance(v, Mapping):
            pairs = list(v.items())
            return '{"$map":[', _pairs(pairs, path), ("]]}" if pairs else "]}"), "$map"
        # a dataclass instance
        fields = [(f.name, getattr(v, f.name)) for f in dataclasses.fields(v)]  # type: ignore[arg-type]
        opening = '{"$object":{"type":' + _s(_type_name(v)) + ',"fields":{'
        items = ((("," if i else "") + _s(name) + ":", x, path) for i, (name, x) in enumerate(fields))
        return opening, items, "}}}", "$object"


def _pairs(pairs: list[tuple[object, object]], path: str) -> Iterator[tuple[str, object, str]]:
    for i, (k, x) in enumerate(pairs):
        yield ("[" if i == 0 else "],["), k, path
        yield ",", x, path


def _field(value: object, path: str, context: str) -> tuple[str, list[Marker]]:
    """One field's JSON text: as itself when it can be; else tagged and bounded."""
    em = _Emitter(None)
    em.run(value, path, context)
    if not em.markers and em.max_depth <= sys.getrecursionlimit():
        return "".join(em.out), []
    bounded = _Emitter(BOUND)
    bounded.run(value, path, context)
    return "".join(bounded.out), bounded.markers


def _safe_field(value: object, path: str, context: str) -> tuple[str, list[Marker]]:
    try:
        return _field(value, path, context)
    except Exception as exc:  # MemoryError and the like: keep the type and what failed
        text = '{"type":' + _s(_type_name(value)) + ',"error":' + _s(f"{type(exc).__name__}"[:200]) + "}"
        return _tag("$object", text), [Marker(path, "$object")]


def _row_items(obj: object) -> list[tuple[str, object]] | None:
    """The input's fields by name when it can be stored row-shaped, else None (stored under ``$input``)."""
    if isinstance(obj, Call):
        return [(name, getattr(obj, name)) for name in _CALL_FIELDS]
    if isinstance(obj, Mapping):
        items = list(obj.items())
        if all(isinstance(k, str) and not k.startswith("$") for k, _ in items):
            return [(str.__str__(k), v) for k, v in items]
    return None


def encode(obj: object) -> Encoded:
    """The quarantine's ``raw`` for an input the writer refused (or the database did). Never raises."""
    parts = ['{"' + FORMAT_KEY + '":' + _s(FORMAT)]
    markers: list[Marker] = []
    try:
        items = _row_items(obj)
    except Exception:  # a mapping that cannot even be iterated
        items = None
    if items is None:
        text, found = _safe_field(obj, "(input)", _ROOT)
        parts.append('"' + INPUT_KEY + '":' + text)
        markers += found
    else:
        for name, value in items:
            text, found = _safe_field(value, name, FIELD_CONTEXT.get(name, _ANY))
            parts.append(_s(name) + ":" + text)
            markers += found
    return Encoded(",".join(parts) + "}", tuple(markers))


# --- decoding ---------------------------------------------------------------------------------------------


def _loads(text: str) -> tuple[object, str | None]:
    try:
        return json.loads(text), None
    except RecursionError:
        return _loads_on_fresh_stack(text)
    except ValueError as exc:
        return None, f"raw is not valid JSON ({exc})"


def _loads_on_fresh_stack(text: str) -> tuple[object, str | None]:
    """Nesting the writer accepted parses on a fresh thread's stack, whatever the caller's depth."""
    box: list[tuple[object, str | None]] = []

    def parse() -> None:
        try:
            box.append((json.loads(text), None))
        except RecursionError:
            box.append((None, "raw is nested too deeply to parse"))
        except ValueError as exc:
            box.append((None, f"raw is not valid JSON ({exc})"))

    t = threading.Thread(target=parse, name="callvault-raw-parse")
    t.start()
    t.join()
    return box[0] if box else (None, "raw could not be parsed")


def _unwrap(node: object, path: str, markers: list[Marker], *, legacy: bool = False) -> object:
    """Parsed JSON -> the value it encodes: ``$literal`` unwrapped, every other tag recorded in ``markers``.

    ``legacy``: an older callvault's raw, which had three tags and no escape: only those are tags."""

    def convert(v: object, p: str, literal: bool = False) -> tuple[object, tuple[Any, Any, str] | None]:
        if isinstance(v, dict):
            if not literal and len(v) == 1:
                ((k, inner),) = v.items()
                if k.startswith("$") and (not legacy or k in LEGACY_TAGS):
                    if k == LITERAL and isinstance(inner, dict) and not legacy:
                        return convert(inner, p, literal=True)
                    markers.append(Marker(p, k))
                    return None, None
            out_d: dict[str, object] = {}
            return out_d, (v, out_d, p)
        if isinstance(v, list):
            out_l: list[object] = []
            return out_l, (v, out_l, p)
        return v, None

    def children(pending: tuple[Any, Any, str]) -> Iterator[tuple[Any, Any, object, str]]:
        src, dst, p = pending
        if isinstance(src, dict):
            for k, x in src.items():
                yield dst, k, x, child_path(p, f"[{_s(k)}]")
        else:
            for i, x in enumerate(src):
                yield dst, None, x, child_path(p, f"[{i}]")

    root, pending = convert(node, path)
    stack = [children(pending)] if pending else []
    while stack:  # depth first, in document order: markers come in the order the encoder found them
        nxt = next(stack[-1], None)
        if nxt is None:
            stack.pop()
            continue
        dst, key, x, p = nxt
        val, more = convert(x, p)
        if key is None:
            dst.append(val)
        else:
            dst[key] = val
        if more:
            stack.append(children(more))
    return root


def decode(text: str) -> Decoded:
    """``raw`` back into the input validation should judge, and the markers of values not sent. Never raises."""
    doc, error = _loads(text)
    if error is not None:
        return Decoded(error=error)
    markers: list[Marker] = []
    if isinstance(doc, dict) and FORMAT_KEY in doc:
        if doc[FORMAT_KEY] != FORMAT:
            return Decoded(error=f"raw has {FORMAT_KEY} {doc[FORMAT_KEY]!r}, which this version does not read")
        rest = {k: v for k, v in doc.items() if k != FORMAT_KEY}
        if set(rest) == {INPUT_KEY}:
            return Decoded(_unwrap(rest[INPUT_KEY], "(input)", markers), tuple(markers))
        value = {k: _unwrap(v, k, markers) for k, v in rest.items()}
        return Decoded(value, tuple(markers))
    if isinstance(doc, dict):  # an older callvault's row: {"tenant_id": ..., ...} or {"$repr": ...}
        if len(doc) == 1 and next(iter(doc)) in LEGACY_TAGS:
            return Decoded(None, (Marker("(input)", next(iter(doc))),), legacy=True)
        value = {k: _unwrap(v, k, markers, legacy=True) for k, v in doc.items()}
        return Decoded(value, tuple(markers), legacy=True)
    return Decoded(_unwrap(doc, "(input)", markers, legacy=True), tuple(markers), legacy=True)


def note(markers: tuple[Marker, ...] | list[Marker]) -> str:
    """What a quarantine reason says about a row stored with tags (the same text at write and at replay)."""
    return (
        f"quarantined as an encoding, not as sent: {describe(markers)}; replay will not land it: "
        "put the values to store in raw (docs/ingest.md)"
    )
