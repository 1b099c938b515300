"""Transcript search, always pinned to one tenant and a window.

Two ways to match (:class:`Match`, pure):

* ``phrase`` (the default): the transcript contains the text as written, ignoring case — an exact
  phrase or any substring (``"asked for a refund"``, ``"refund"`` also finds "refunds"). Postgres:
  ``transcript ILIKE '%text%'`` (the text escaped, passed as a parameter), served by a pg_trgm GIN index;
  the archive: ``strpos(lower(transcript), lower(text))`` in DuckDB.
* ``words``: every word of the text, in any order, as PostgreSQL full-text search finds them
  (``to_tsvector(language, transcript) @@ plainto_tsquery(language, text)``), served by a GIN index on
  that expression; with a language such as ``english`` words are stemmed ("refunds" finds "refund"),
  ``simple`` (the default) keeps every word as it is, for transcripts in mixed languages. The archive
  matches each word as a whole word, ignoring case, without stemming.

Both indexes are made by ``callvault search index`` (:mod:`callvault.search_index`) on every partition
without blocking writes (:mod:`callvault.indexes`), and every partition made later gets them from the
parent. The language is recorded as the full-text index's comment; readers read it from there (the app role may read the
catalog), so it is configured once. The query itself is planned in :mod:`callvault.query_base` like
every tenant read: ``tenant_id`` and ``started_at`` bounds pin it to the window's partitions, row-level
security applies, newest first with the same cursor as ``recent_calls``.

The search text is call content: it is only ever a bound parameter, never part of SQL, and no error
message, log line or metric repeats it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from callvault.config import Settings
from callvault.errors import InvalidSetting

PHRASE, WORDS = "phrase", "words"
MODES = (PHRASE, WORDS)
MIN_CHARS = 3  # pg_trgm indexes trigrams: a shorter phrase could only be found by reading every row
MAX_CHARS = 200
MAX_WORDS = 16
DEFAULT_LANGUAGE = "simple"
SNIPPET_CHARS = 40  # characters of context each side of the match
MARK_START, MARK_END = "«", "»"  # around the match in a snippet
LANGUAGE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")  # a text search configuration's name
_WORD = re.compile(r"\w+", re.UNICODE)
LANGUAGE_TAG = "callvault search language "  # the full-text index's comment: this, then the language


@dataclass(frozen=True)
class Match:
    """What a search looks for (pure; checked on creation by :meth:`parse`)."""

    text: str
    mode: str = PHRASE
    language: str = DEFAULT_LANGUAGE

    @classmethod
    def parse(cls, text: object, mode: str = PHRASE, language: str | None = None) -> Match:
        """A checked match; :class:`InvalidSetting` naming the problem (never repeating the text: it is
        call content)."""
        if mode not in MODES:
            raise InvalidSetting(f"search mode {mode!r} is not one of {', '.join(MODES)}")
        if not isinstance(text, str):
            raise InvalidSetting(f"the search text must be a string, not {type(text).__name__}")
        stripped = text.strip()
        if not stripped:
            raise InvalidSetting("the search text is empty: give the words or the phrase to find")
        if "\x00" in stripped:
            raise InvalidSetting("the search text holds a NUL byte, which no transcript can contain: remove it")
        if len(stripped) > MAX_CHARS:
            raise InvalidSetting(
                f"the search text is {len(stripped)} characters long (at most {MAX_CHARS}): search for a shorter "
                "phrase that identifies the calls"
            )
        lang = language or DEFAULT_LANGUAGE
        if not LANGUAGE_NAME.match(lang):
            raise InvalidSetting(
                f"search language {lang!r} is not a text search configuration name (e.g. simple, english, german)"
            )
        if mode == PHRASE and len(stripped) < MIN_CHARS:
            raise InvalidSetting(
                f"the search text is {len(stripped)} character(s) long: a phrase needs at least {MIN_CHARS} "
                "(the trigram index cannot find shorter ones without reading every call)"
            )
        match = cls(stripped, mode, lang)
        if mode == WORDS:
            words = match.words()
            if not words:
                raise InvalidSetting("the search text has no words (letters or digits) to search for")
            if len(words) > MAX_WORDS:
                raise InvalidSetting(f"the search text has {len(words)} words (at most {MAX_WORDS}): use fewer")
        return match

    def words(self) -> list[str]:
        """The text's words, lower-cased, each once, in order."""
        return list(dict.fromkeys(w.lower() for w in _WORD.findall(self.text)))

    def like_pattern(self) -> str:
        """``%text%`` for ILIKE, with ``\\``, ``%`` and ``_`` escaped (the default escape character)."""
        escaped = self.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return f"%{escaped}%"

    # -- Postgres ----------------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """The statement's parameters: the text (and its ILIKE pattern) travel as values, never as SQL."""
        return {"q": self.text, "pat": self.like_pattern()}

    def pg_predicate(self) -> sql.Composed:
        """The WHERE condition, spelled exactly as the index's expression (so the planner uses it)."""
        if self.mode == PHRASE:
            return sql.Composed([sql.SQL("transcript ILIKE %(pat)s")])
        return sql.SQL("{} @@ plainto_tsquery({}::regconfig, %(q)s)").format(
            fts_expression(self.language), sql.Literal(self.language)
        )

    def pg_snippet(self) -> sql.Composed:
        """The snippet column: the match with up to :data:`SNIPPET_CHARS` characters each side, marked."""
        if self.mode == WORDS:
            options = f"StartSel={MARK_START}, StopSel={MARK_END}, MaxWords=18, MinWords=6, MaxFragments=1"
            headline = "ts_headline({lang}::regconfig, transcript, plainto_tsquery({lang}::regconfig, %(q)s), {o})"
            return sql.SQL(headline).format(lang=sql.Literal(self.language), o=sql.Literal(options))
        pos = sql.SQL("strpos(lower(transcript), lower(%(q)s))")
        n = sql.Literal(SNIPPET_CHARS)
        return sql.SQL(
            "CASE WHEN {p} > 0 THEN substr(transcript, greatest({p} - {n}, 1), least({p} - 1, {n})) || {a} || "
            "substr(transcript, {p}, char_length(%(q)s)) || {b} || substr(transcript, {p} + char_length(%(q)s), {n}) "
            "END"
        ).format(p=pos, n=n, a=sql.Literal(MARK_START), b=sql.Literal(MARK_END))

    # -- DuckDB (the archive tier) -------------------------------------------------------------------
    def duck_predicate(self) -> tuple[str, list[Any]]:
        """DuckDB condition and its ``?`` parameters over an archived object's ``transcript``."""
        if self.mode == PHRASE:
            return "strpos(lower(transcript), lower(?)) > 0", [self.text]
        words = self.words()
        return " AND ".join("regexp_matches(lower(transcript), ?)" for _ in words), [rf"\b{w}\b" for w in words]

    def duck_snippet(self) -> tuple[str, list[Any]]:
        """DuckDB snippet expression (same shape as Postgres's phrase snippet) and its parameters."""
        needle = self.text if self.mode == PHRASE else self.words()[0]
        p = "strpos(lower(transcript), lower(?))"
        n = SNIPPET_CHARS
        expr = (
            f"CASE WHEN {p} > 0 THEN substr(transcript, greatest({p} - {n}, 1), least({p} - 1, {n})) || '{MARK_START}' "
            f"|| substr(transcript, {p}, length(?)) || '{MARK_END}' || substr(transcript, {p} + length(?), {n}) END"
        )
        return expr, [needle] * 7  # five positions, two lengths


def fts_expression(language: str) -> sql.Composed:
    """``to_tsvector('<language>'::regconfig, transcript)``: the full-text index's expression."""
    return sql.SQL("to_tsvector({}::regconfig, transcript)").format(sql.Literal(language))


def index_names(settings: Settings) -> dict[str, str]:
    """The two indexes on the parent, by mode."""
    return {PHRASE: f"{settings.table[:30]}_search_trgm_idx", WORDS: f"{settings.table[:30]}_search_fts_idx"}


# The full-text index's comment (catalog only: any role may read it, the RLS-bound app role included).
LANGUAGE_SQL = "SELECT obj_description(to_regclass(%s), 'pg_class')"


def language_param(settings: Settings) -> tuple[str]:
    """:data:`LANGUAGE_SQL`'s parameter: the full-text index's qualified name."""
    return (sql.Identifier(settings.schema, index_names(settings)[WORDS]).as_string(),)


def language_from(row: Any) -> str | None:
    """The language recorded in the index's comment (a :data:`LANGUAGE_SQL` row), or None."""
    comment = row[0] if row else None
    if isinstance(comment, str) and comment.startswith(LANGUAGE_TAG):
        return comment[len(LANGUAGE_TAG) :].strip() or None
    return None
