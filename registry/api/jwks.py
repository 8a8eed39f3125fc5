"""The thin shell around ``registry.acl.jwt``: fetching the keys behind a ``JWKSURL``.

Consul's ``jwt`` method keeps a remote key set (go-oidc's ``RemoteKeySet``) that it fetches when a token
arrives and refetches when a token names a key it does not have. Here: ``https://`` and ``http://`` URLs
are fetched with aiohttp (trusting ``JWKSCACert`` when set, else the system's CAs), ``file://`` URLs are
read from the server's disk (a key set dropped by configuration management); the answer is parsed by the
pure core and kept for ``ttl`` seconds, and a caller whose token failed to verify may ask once more with
``refresh=True`` (rate-limited by ``min_refresh``). Errors never quote what was fetched.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

from registry.acl.jwt import JWTConfig, VerifyKey, parse_jwks

__all__ = ["JWKSCache", "JWKSError"]

MAX_JWKS_BYTES = 1024 * 1024


class JWKSError(Exception):
    """The key set could not be had; ``str()`` says why without quoting the document."""


class JWKSCache:
    def __init__(self, *, ttl: float = 300.0, min_refresh: float = 10.0, timeout: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self._ttl = ttl
        self._min_refresh = min_refresh
        self._timeout = timeout
        self._clock = clock
        self._entries: dict[tuple[str, str], tuple[float, tuple[VerifyKey, ...]]] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def keys(self, config: JWTConfig, *, refresh: bool = False) -> tuple[VerifyKey, ...]:
        """The keys at ``config.jwks_url``, from the cache when fresh."""
        cache_key = (config.jwks_url, config.jwks_ca_cert)
        lock = self._locks.setdefault(cache_key, asyncio.Lock())
        async with lock:
            now = self._clock()
            hit = self._entries.get(cache_key)
            if hit is not None:
                age = now - hit[0]
                if age < self._ttl and not (refresh and age >= self._min_refresh):
                    return hit[1]
            raw = await self._fetch(config)
            try:
                keys = parse_jwks(raw)
            except ValueError as exc:
                raise JWKSError(f"error fetching JWKS from {config.jwks_url}: {exc}") from None
            self._entries[cache_key] = (now, keys)
            return keys

    async def _fetch(self, config: JWTConfig) -> bytes:
        url = config.jwks_url
        parts = urlsplit(url)
        if parts.scheme == "file":
            path = Path(unquote(parts.path))
            try:
                data = await asyncio.to_thread(_read_capped, path)
            except OSError as exc:
                raise JWKSError(f"error reading JWKS from {url}: {exc.strerror or type(exc).__name__}") from None
            return data
        import aiohttp

        ctx: ssl.SSLContext | bool = True
        if config.jwks_ca_cert:
            ctx = ssl.create_default_context(cadata=config.jwks_ca_cert)
        try:
            timeout = aiohttp.ClientTimeout(total=self._timeout)
            async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url, ssl=ctx) as resp:
                if resp.status != 200:
                    raise JWKSError(f"error fetching JWKS from {url}: status {resp.status}")
                data = await resp.content.read(MAX_JWKS_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise JWKSError(f"error fetching JWKS from {url}: {type(exc).__name__}") from None
        if len(data) > MAX_JWKS_BYTES:
            raise JWKSError(f"error fetching JWKS from {url}: larger than {MAX_JWKS_BYTES} bytes")
        return data


def _read_capped(path: Path) -> bytes:
    with path.open("rb") as f:
        data = f.read(MAX_JWKS_BYTES + 1)
    if len(data) > MAX_JWKS_BYTES:
        raise OSError(0, f"larger than {MAX_JWKS_BYTES} bytes")
    return data
