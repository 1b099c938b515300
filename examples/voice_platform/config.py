"""The example service's configuration, read from the environment once, at start-up.

====================  =====================================================================================
``VOICE_INGEST_DSN``  required. Connects as the trusted ingest role (``callvault_ingest``: BYPASSRLS, INSERT
                      only, cannot read a transcript) for the ``AsyncWriter`` behind ``POST /calls``.
``VOICE_APP_DSN``     required. Connects as the row-level-security-bound app role (``callvault_app``: SELECT
                      only, sees one tenant per transaction) for every ``GET``. The service refuses to start
                      when this role bypasses row-level security (a superuser, the owner, the ingest role).
``VOICE_OWNER_DSN``   optional. The owner role (``callvault_owner``): ``/healthz`` adds ``callvault health``,
                      and ``nightly.py`` archives and restores with it. Never used to serve tenant data.
``VOICE_TOKENS``      a JSON object mapping each bearer token to its tenant's UUID,
                      ``{"<token>": "<tenant uuid>", ...}``; or
``VOICE_TOKENS_FILE`` the path of a file holding that JSON object (keep it out of the repository).
``VOICE_POOL_SIZE``   optional, default 4: the most connections the read pool opens.
====================  =====================================================================================

Which table (``CALLVAULT_SCHEMA``, ``CALLVAULT_TABLE``) and the role names (``CALLVAULT_ROLE_PREFIX``, ...)
come from callvault's own loader, :func:`callvault.config.from_env`, as for the CLI.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from callvault.config import Settings, from_env
from callvault.errors import InvalidSetting
from callvault.tenancy import tenant_value

DEFAULT_POOL_SIZE = 4


class ConfigError(Exception):
    """The service cannot start with this environment; the message names the variable and the fix."""


@dataclass(frozen=True)
class Tokens:
    """Bearer token -> tenant UUID (canonical text).

    The example's authentication, and only that: a static table of long random tokens, one or more per
    tenant. REPLACE IT with your platform's own authentication (OAuth2/OIDC access tokens, mTLS, API keys
    in a secrets manager...): all the rest of the service needs is "this request is for tenant T"."""

    by_token: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, doc: object, where: str) -> Tokens:
        if not isinstance(doc, dict) or not doc:
            raise ConfigError(f'{where} must be a non-empty JSON object {{"<token>": "<tenant uuid>", ...}}')
        out: dict[str, str] = {}
        for token, tenant in doc.items():
            if not isinstance(token, str) or not token.strip():
                raise ConfigError(f"{where}: a token is empty; use long random strings (e.g. secrets.token_urlsafe())")
            try:
                out[token] = tenant_value(str(tenant))
            except InvalidSetting as exc:
                raise ConfigError(f"{where}: {exc}") from None
        return cls(out)

    def tenant_for(self, token: str) -> str | None:
        """The tenant of ``token``, or None. Every entry is compared in constant time, so the time taken
        says nothing about how much of a token matched."""
        found = None
        for known, tenant in self.by_token.items():
            if secrets.compare_digest(known.encode(), token.encode()):
                found = tenant
        return found


@dataclass(frozen=True)
class Config:
    ingest_dsn: str
    app_dsn: str
    tokens: Tokens
    owner_dsn: str | None = None
    pool_size: int = DEFAULT_POOL_SIZE
    settings: Settings = field(default_factory=Settings)  # which table, and the role names

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        env = os.environ if environ is None else environ

        def need(name: str, what: str) -> str:
            value = env.get(name, "").strip()
            if not value:
                raise ConfigError(f"{name} is not set: the DSN of {what} (see examples/voice_platform/README.md)")
            return value

        if env.get("VOICE_TOKENS_FILE"):
            path = Path(env["VOICE_TOKENS_FILE"])
            try:
                text, where = path.read_text(), f"VOICE_TOKENS_FILE {path}"
            except OSError as exc:
                raise ConfigError(f"VOICE_TOKENS_FILE {path}: {exc.strerror or exc}") from None
        else:
            text, where = need("VOICE_TOKENS", "nothing: a JSON object {token: tenant uuid}"), "VOICE_TOKENS"
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"{where} is not JSON: {exc}") from None
        try:
            pool_size = int(env.get("VOICE_POOL_SIZE") or DEFAULT_POOL_SIZE)
        except ValueError:
            raise ConfigError(f"VOICE_POOL_SIZE={env['VOICE_POOL_SIZE']!r} is not a number") from None
        try:
            # only the table and role names are used; each component gets its own DSN below
            settings = from_env(env, dsn=None).with_(dsn=None, embedded=False)
        except InvalidSetting as exc:
            raise ConfigError(str(exc)) from None
        return cls(
            ingest_dsn=need("VOICE_INGEST_DSN", "the ingest role (callvault_ingest)"),
            app_dsn=need("VOICE_APP_DSN", "the app role (callvault_app)"),
            tokens=Tokens.parse(doc, where),
            owner_dsn=env.get("VOICE_OWNER_DSN") or None,
            pool_size=max(1, pool_size),
            settings=settings,
        )

    def as_role(self, dsn: str) -> Settings:
        """callvault settings for this table, connecting with ``dsn``."""
        return self.settings.with_(dsn=dsn)
