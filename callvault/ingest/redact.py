"""Redaction at ingest: rewrite a call's transcript (and chosen metadata keys) before anything is written
or quarantined (pure).

    from callvault.ingest import Writer
    from callvault.ingest.redact import Redaction

    with Writer(settings, redact=Redaction(metadata_keys=("caller_email",))) as w:
        w.write(call)   # "mail me at ann@example.com" lands as "mail me at [EMAIL]"

The built-in redactors replace e-mail addresses (``[EMAIL]``), phone numbers (7 to 15 digits, with the
usual separators and an optional ``+``: ``[PHONE]``), payment card numbers (13 to 19 digits passing the
Luhn check: ``[CARD]``; a digit run failing it is left to the phone rule) and national id numbers (US
SSN ``123-45-6789``, UK NINO ``AB123456C``: ``[NATIONAL_ID]``). A run of 7 to 15 digits is taken for a
phone number whatever its separators: over-redacting (an 8-digit order number) is the safe side. The
numbers are found in one pass, and only in text that has a digit; e-mail only in text with an ``@``.
A redactor of your own is any ``str -> (str, count)`` function added with ``Redaction(extra=[...])``;
the Writer counts what each kind replaced in
``callvault_writer_redactions_total{table, kind}``.

What the writer stores is the redacted text: the original is never written, quarantined or logged.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from callvault.ingest.validate import Rejected, Row

Extra = Callable[[str], tuple[str, int]]

_LOCAL_MASK = bytes(ord("a") if chr(i) in string.ascii_letters + string.digits + "._%+-" else 32 for i in range(256))
_DOMAIN = re.compile(r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# Numbers are found on a mask of the text (one byte a character: digits -> "0", separators -> "-", "+"
# kept, anything else -> " "), where a literal-led expression runs at C speed; the text itself is only
# sliced where a run was found.
_MASK = bytes(
    ord("0") if chr(i).isdigit() and i < 128 else ord("-") if chr(i) in " ().-" else ord("+") if i == 43 else 32
    for i in range(256)
)
_RUNS = re.compile(rb"0[0\-]{4,24}0")
_SSN = re.compile(r"[0-9]{3}-[0-9]{2}-[0-9]{4}")
_NINO_BEFORE = re.compile(r"[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?$")
_NINO_AFTER = re.compile(r" ?[A-D](?![A-Za-z0-9])")
TOKENS = {"email": "[EMAIL]", "phone": "[PHONE]", "card": "[CARD]", "national_id": "[NATIONAL_ID]"}
KINDS = tuple(TOKENS)


def luhn(digits: str) -> bool:
    """Whether ``digits`` (only digits) passes the Luhn check (pure)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _emails(text: str) -> tuple[str, int]:
    """E-mail addresses replaced, found from each ``@``: the local part by a C-speed scan back over a
    mask of the text (a regex tried at every word, or anchored before each ``@``, is several times slower)."""
    out, n, start, at = [], 0, 0, text.find("@")
    while at != -1:
        domain = _DOMAIN.match(text, at + 1)
        if domain is not None:
            lo = max(start, at - 64)  # a local part is at most 64 characters
            begin = lo + text[lo:at].encode("latin-1", "replace").translate(_LOCAL_MASK).rfind(b" ") + 1
            if begin < at:
                out += [text[start:begin], TOKENS["email"]]
                n += 1
                start = domain.end()
        at = text.find("@", max(at + 1, start))
    if not n:
        return text, 0
    out.append(text[start:])
    return "".join(out), n


def _classify(text: str, mask: bytes, start: int, end: int) -> tuple[str | None, int, int]:
    """What the digit run ``text[start:end]`` is, and its span (a NINO takes its letters too)."""
    digits = mask.count(b"0", start, end)
    if digits == 9 and _SSN.fullmatch(text, start, end):
        return "national_id", start, end
    if digits == 6:
        before = _NINO_BEFORE.search(text, max(0, start - 3), start)
        after = _NINO_AFTER.match(text, end)
        if before is not None and after is not None:
            return "national_id", before.start(), after.end()
    if 13 <= digits <= 19 and luhn("".join(c for c in text[start:end] if c.isdigit())):
        return "card", start, end
    if 7 <= digits <= 15:
        return "phone", start, end
    return None, start, end  # a number that is neither (a long reference, a year range): left as it is


def redact_text(text: str, counts: dict[str, int] | None = None) -> str:
    """``text`` with the built-in kinds replaced by their tokens; ``counts`` (if given) adds up each kind."""
    if not text:
        return text
    if "@" in text:  # cheap tests first: most sentences have no "@" and many no digit at all
        text, n = _emails(text)
        if counts is not None and n:
            counts["email"] = counts.get("email", 0) + n
    if not any(d in text for d in "0123456789"):  # ten C-speed scans beat one regex search
        return text
    mask = text.encode("latin-1", "replace").translate(_MASK)  # one byte a character: offsets hold
    out, last = [], 0
    for m in _RUNS.finditer(mask):
        start, end = m.span()
        if start and mask[start - 1] == 43:  # a leading "+"
            start -= 1
        if start < last:
            continue
        kind, start, end = _classify(text, mask, start, end)
        if kind is None or start < last:
            continue
        out += [text[last:start], TOKENS[kind]]
        last = end
        if counts is not None:
            counts[kind] = counts.get(kind, 0) + 1
    if not out:
        return text
    out.append(text[last:])
    return "".join(out)


@dataclass(frozen=True)
class Redaction:
    """What to redact: the transcript (``transcript``), the values at ``metadata_keys`` (top-level keys),
    with the built-ins (``builtins``) and your own functions (``extra``)."""

    transcript: bool = True
    metadata_keys: tuple[str, ...] = ()
    builtins: bool = True
    extra: tuple[Extra, ...] = field(default_factory=tuple)

    def text(self, value: str, counts: dict[str, int]) -> str:
        """One string redacted, counting each kind in ``counts``."""
        if self.builtins:
            value = redact_text(value, counts)
        for fn in self.extra:
            value, n = fn(value)
            if n:
                counts["custom"] = counts.get("custom", 0) + n
        return value

    def call(self, call: Any, counts: dict[str, int]) -> Any:
        """The call (a :class:`~callvault.ingest.Call` or a mapping) with its text redacted: a new object,
        the caller's is left as it was. Values that are not strings are left for validation to judge."""
        if isinstance(call, Mapping):
            out = dict(call)
            if self.transcript and isinstance(out.get("transcript"), str):
                out["transcript"] = self.text(out["transcript"], counts)  # a mapping is copied anyway
            if self.metadata_keys and isinstance(out.get("metadata"), Mapping):
                out["metadata"] = self._metadata(out["metadata"], counts)
            return out
        changes: dict[str, Any] = {}
        transcript = getattr(call, "transcript", None)
        if self.transcript and isinstance(transcript, str):
            redacted = self.text(transcript, counts)
            if redacted != transcript:  # a copy only when something changed (most calls: none)
                changes["transcript"] = redacted
        metadata = getattr(call, "metadata", None)
        if self.metadata_keys and isinstance(metadata, Mapping):
            changes["metadata"] = self._metadata(metadata, counts)
        return replace(call, **changes) if changes else call

    def result(self, out: Row | Rejected, counts: dict[str, int]) -> Row | Rejected:
        """A validated call redacted: a row's transcript (and metadata keys) rewritten in the row itself --
        no copy of the call -- or a rejected call's input (what the quarantine keeps)."""
        if type(out) is Rejected:
            return Rejected(self.call(out.raw, counts), out.reason)
        row: Any = out
        transcript, metadata = row[5], row[6]
        if self.transcript and transcript:
            redacted = (
                redact_text(transcript, counts) if self.builtins and not self.extra else self.text(transcript, counts)
            )
            if redacted != transcript:
                row = (*row[:5], redacted, *row[6:])
        if self.metadata_keys and metadata and any(k.encode() in metadata for k in self.metadata_keys):
            doc = json.loads(metadata)
            if isinstance(doc, dict):
                new = self._metadata(doc, counts)
                if new != doc:
                    row = (*row[:6], json.dumps(new, ensure_ascii=False, separators=(",", ":")).encode(), *row[7:])
        return row  # type: ignore[no-any-return]

    def _metadata(self, metadata: Mapping[str, Any], counts: dict[str, int]) -> dict[str, Any]:
        out = dict(metadata)
        for key in self.metadata_keys:
            if isinstance(out.get(key), str):
                out[key] = self.text(out[key], counts)
        return out


def as_redaction(value: Redaction | bool | Iterable[str] | None) -> Redaction | None:
    """The Writer's ``redact=``: a :class:`Redaction`, ``True`` (the built-ins on transcripts), a list of
    metadata keys (the built-ins on transcripts and those keys), or None/False (no redaction)."""
    if value is None or value is False:
        return None
    if value is True:
        return Redaction()
    if isinstance(value, Redaction):
        return value
    return Redaction(metadata_keys=tuple(value))
