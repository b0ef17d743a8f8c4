"""Web front-end sessions and cross-site request protection.

A session is a signed cookie: the operator's name, when it was issued, and an HMAC of
both and of the operator's token hash, keyed by a key derived from the device key file
(``campaignctl.credentials.key_path``, which every machine serving the device API
already shares). So a session survives a restart of ``serve``, any ``serve`` sharing the
database accepts it, nothing is stored per session, and revoking the operator ends every
session of theirs at their next request (the hash is looked up for each request, and a
revoked operator has none to match).

Every state-changing form carries a CSRF token, an HMAC of the session cookie (so it is
per session and needs no storage), and the request's Origin (or Referer) must be this
site: either alone stops a cross-site form post.

The key is read once per ``serve`` process: replacing the key file ends the sessions
a process accepts when it restarts.

Everything here reads text a browser (or anyone) sent: a malformed cookie or token is
no session and no valid token, never an error.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from campaignctl import credentials, db
from campaignctl.api import digits
from campaignctl.errors import InputError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

COOKIE = "campaignctl_session"
#: A session lasts this long after login (seconds); then the operator logs in again.
MAX_AGE = 12 * 3600
PATH = "/ui"
#: The issue time's digits at most (seconds since 1970 fit in 11 until the year 5138).
MAX_TIME_DIGITS = 12


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions:
    def __init__(self, engine: "Engine") -> None:
        self.engine = engine
        self._key: bytes | None = None
        self._lock = threading.Lock()

    def key(self) -> bytes:
        """The signing key, derived from the device key file (created 0600 if missing):
        never the file's key itself, so a cookie's MAC tells nothing about device secrets."""
        with self._lock:
            if self._key is None:
                base = credentials.load_key(self.engine, create=True)
                self._key = hmac.new(base, b"campaignctl web session", hashlib.sha256).digest()
            return self._key

    def _mac(self, name: str, issued: int, token_hash: str) -> str:
        message = f"{name}\x1f{issued}\x1f{token_hash}".encode()
        return _b64(hmac.new(self.key(), message, hashlib.sha256).digest())

    def _token_hash(self, name: str) -> str | None:
        with db.read(self.engine) as conn:
            row = db.run(
                conn, "SELECT token_hash FROM operator WHERE name = :name AND revoked_at IS NULL", {"name": name}
            ).first()
        return None if row is None else str(row[0])

    def issue(self, name: str, now: float | None = None) -> str:
        """The cookie value of a new session of operator ``name`` (authenticated)."""
        issued = int(time.time() if now is None else now)
        token_hash = self._token_hash(name) or ""
        return f"{_b64(name.encode())}.{issued}.{self._mac(name, issued, token_hash)}"

    def operator(self, cookie: str | None, now: float | None = None) -> str | None:
        """The operator a session cookie belongs to: None when it is missing, forged,
        expired, or its operator was revoked since."""
        if not cookie or len(cookie) > 1000:
            return None
        parts = cookie.split(".")
        if len(parts) != 3 or not digits(parts[1]) or len(parts[1]) > MAX_TIME_DIGITS:
            return None
        try:
            name = _unb64(parts[0]).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        if "\x00" in name:  # no operator's name (PostgreSQL text holds no NUL)
            return None
        issued = int(parts[1])
        age = (time.time() if now is None else now) - issued
        if not 0 <= age <= MAX_AGE:
            return None
        token_hash = self._token_hash(name)
        if token_hash is None or not _same(parts[2], self._mac(name, issued, token_hash)):
            return None
        return name

    def csrf(self, cookie: str) -> str:
        """The CSRF token of a session: what its forms carry in a hidden field."""
        return _b64(hmac.new(self.key(), b"csrf\x1f" + cookie.encode(), hashlib.sha256).digest())

    def csrf_ok(self, cookie: str, given: str | None) -> bool:
        return bool(given) and _same(self.csrf(cookie), given or "")


def _same(expected: str, given: str) -> bool:
    """A constant-time comparison of a MAC with what was sent, as bytes:
    ``hmac.compare_digest`` refuses a str that is not ASCII with a TypeError."""
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "surrogateescape"))


def public_origin(url: str) -> str:
    """The origin (``https://host[:port]``) of ``serve --public-url``: where browsers
    reach the front-end, through a TLS proxy."""
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"expected a URL such as https://campaigns.example.com, not {url!r}", field="--public-url")
    return f"{parts.scheme}://{parts.netloc.lower()}"


def same_origin(origin: str | None, referer: str | None, host: str | None, public: str | None = None) -> bool:
    """A state-changing request comes from this site: its Origin, else its Referer, is
    ``public`` (the origin of ``serve --public-url``) when it is given, else names this
    host (and port; not the scheme, which a TLS proxy in front changes). Browsers send
    Origin with every form post; a request with neither (a plain HTTP client) is left
    to the CSRF token."""
    source = origin if origin and origin != "null" else referer
    if origin == "null":
        return False  # a sandboxed or opaque origin is never this site
    if not source:
        return bool(host or public)
    try:
        parts = urlsplit(source)
    except ValueError:
        return False
    if public is not None:
        return f"{parts.scheme}://{parts.netloc.lower()}" == public
    return bool(host) and parts.netloc.lower() == (host or "").lower()
