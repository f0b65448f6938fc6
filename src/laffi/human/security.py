"""Who is asking, and is the form theirs: token cookie, CSRF tokens, response headers.

- The annotator's token travels in an HttpOnly, SameSite=Strict cookie set at sign-in; every
  request looks it up again, so a revoked token stops working on the next request.
- Every form carries a CSRF token, an HMAC of the signed-in token's hash under a per-database
  secret. The sign-in form, before there is a token, uses a random value that must match a
  cookie (double submit). A POST whose Origin header names another site is refused as well.
- Every response forbids framing, sniffing and any script or style without the page's nonce.

    python -m pytest tests/human/test_human_security.py
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

TOKEN_COOKIE = "laffi_token"
LOGIN_COOKIE = "laffi_login"
CSRF_FIELD = "csrf_token"


def csrf_token(secret: str, token_hash: str) -> str:
    return hmac.new(secret.encode(), f"csrf|{token_hash}".encode(), hashlib.sha256).hexdigest()


def csrf_ok(expected: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(expected.encode(), given.encode())


def new_login_nonce() -> str:
    return secrets.token_urlsafe(24)


def same_origin(origin: str | None, host_url: str) -> bool:
    """True when the browser sent no Origin (older clients, curl) or the one this app is served at."""
    if not origin:
        return True
    if origin == "null":  # sandboxed frames and some redirects: never ours
        return False
    want, got = urlsplit(host_url), urlsplit(origin)
    return (got.scheme, got.netloc) == (want.scheme, want.netloc)


def security_headers(nonce: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
                                    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        # not no-referrer: under it Chromium sends "Origin: null" on our own form posts
        "Referrer-Policy": "same-origin",
        "Cache-Control": "no-store",  # pages hold people's work: keep them out of shared caches
    }
