"""Tenants: who a bearer token belongs to, and what that tenant may hold and ask for.

Every session lives in its tenant's namespace, so a session id is useless to
anyone else: another tenant naming it reaches an empty namespace, exactly as
if the id had never existed. Tokens come from a file or the environment, never
from the command line (visible in ``ps``), and are kept only as SHA-256
digests, so a log or a crash dump cannot leak them.

A tenants file (TOML)::

    [defaults]                 # limits for every tenant, each optional
    max_sessions = 16
    max_kv_tokens = 8192
    max_requests_per_s = 20

    [tenants.acme]
    token = "…"                # or token_sha256 = "<hex digest>"
    max_sessions = 64          # overrides the default for this tenant
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from dataclasses import dataclass, field, fields

from citer_cloud.sessions import TenantLimits
from citer_cloud.settings_file import read_toml

#: Environment variable with ``name=token`` pairs separated by commas (default limits apply).
TENANTS_ENV = "CITER_CLOUD_TENANTS"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_LIMIT_KEYS = {f.name for f in fields(TenantLimits)} | {"max_requests_per_s"}


@dataclass(frozen=True)
class Tenant:
    name: str
    limits: TenantLimits = field(default_factory=TenantLimits)
    max_requests_per_s: float | None = None


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TenantDirectory:
    """Token digest → tenant. ``tenant_for`` is what the auth interceptor and the servicer ask."""

    def __init__(self, by_digest: dict[str, Tenant]) -> None:
        if not by_digest:
            raise ValueError("no tenants configured")
        self._by_digest = dict(by_digest)
        self._buckets = {tenant.name: _TokenBucket(tenant.max_requests_per_s) for tenant in by_digest.values()}

    @property
    def names(self) -> list[str]:
        return sorted(tenant.name for tenant in self._by_digest.values())

    def tenant_for(self, authorization: str | None) -> Tenant | None:
        """The tenant whose token ``authorization`` ("Bearer <token>") carries, or None."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme != "Bearer" or not token:
            return None
        return self._by_digest.get(token_digest(token))  # a digest lookup: no timing difference per tenant

    def admit_request(self, tenant: Tenant) -> bool:
        """False when the tenant is over its requests-per-second budget right now."""
        return self._buckets[tenant.name].take()

    @classmethod
    def single(cls, token: str, name: str = "default") -> TenantDirectory:
        """One tenant for one shared token (``--auth-token`` / ``CITER_CLOUD_AUTH_TOKEN``)."""
        return cls({token_digest(token): Tenant(name)})

    @classmethod
    def from_env(cls, text: str) -> TenantDirectory:
        tenants: dict[str, Tenant] = {}
        for pair in filter(None, (part.strip() for part in text.split(","))):
            name, sep, token = pair.partition("=")
            if not sep or not token:
                raise ValueError(f"{TENANTS_ENV} takes name=token pairs separated by commas")
            _add(tenants, token_digest(token), Tenant(_checked_name(name.strip())))
        return cls(tenants)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> TenantDirectory:
        data = read_toml(path, "tenants file")
        defaults = _limits(data.get("defaults", {}), f"{path} [defaults]")
        tenants: dict[str, Tenant] = {}
        for name, entry in (data.get("tenants") or {}).items():
            where = f"{path} [tenants.{name}]"
            if "token" in entry:
                digest = token_digest(str(entry["token"]))
            elif "token_sha256" in entry:
                digest = str(entry["token_sha256"]).lower()
            else:
                raise ValueError(f"{where} needs token or token_sha256")
            limits = {**defaults, **_limits({k: v for k, v in entry.items() if not k.startswith("token")}, where)}
            rate = limits.pop("max_requests_per_s", None)
            _add(tenants, digest, Tenant(_checked_name(name), TenantLimits(**limits), rate))
        if not tenants:
            raise ValueError(f"the tenants file {path} defines no [tenants.NAME] table")
        return cls(tenants)


def _limits(table: dict, where: str) -> dict:
    unknown = set(table) - _LIMIT_KEYS
    if unknown:
        raise ValueError(
            f"{where}: unknown keys {', '.join(sorted(unknown))} (known: {', '.join(sorted(_LIMIT_KEYS))})"
        )
    for key, value in table.items():
        if not isinstance(value, int | float) or value <= 0:
            raise ValueError(f"{where}: {key} must be a positive number, got {value!r}")
    return dict(table)


def _checked_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"tenant name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)")
    return name


def _add(tenants: dict[str, Tenant], digest: str, tenant: Tenant) -> None:
    if digest in tenants:
        raise ValueError(f"tenants {tenants[digest].name!r} and {tenant.name!r} share a token")
    if any(existing.name == tenant.name for existing in tenants.values()):
        raise ValueError(f"tenant {tenant.name!r} is defined twice")
    tenants[digest] = tenant


class _TokenBucket:
    """``rate`` requests per second on average, bursts of up to one second's worth (at least one request)."""

    def __init__(self, rate: float | None) -> None:
        self._rate = rate
        self._capacity = max(1.0, rate or 0.0)
        self._level = self._capacity
        self._at = time.monotonic()
        self._lock = threading.Lock()

    def take(self) -> bool:
        if self._rate is None:
            return True
        with self._lock:
            now = time.monotonic()
            self._level = min(self._capacity, self._level + (now - self._at) * self._rate)
            self._at = now
            if self._level < 1:
                return False
            self._level -= 1
            return True
