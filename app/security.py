"""Security headers on every response, set by the factory (`install(app, config)`):

- Content-Security-Policy: scripts only from this origin (`script-src 'self'`: no inline script,
  no eval; htmx runs with `allowEval: false` from the `htmx-config` meta tag), styles from this
  origin (inline `style` attributes allowed, for progress bars and the like, but no `<style>`
  elements), images and audio from here and from the storage endpoint the signed URLs point at,
  forms posting here (and to Polar's checkout), no framing, no plugins, no <base> rewrites.
  Templates can get a per-request nonce (`csp_nonce()`) for an inline script that must stay;
  none does today.
- The RQ dashboard (admins only, a third-party page built on inline scripts and templates that
  need eval) gets its own, looser policy, scoped to its pages.
- Strict-Transport-Security when the request came over HTTPS (directly, or through
  TRUSTED_PROXIES that say so), for HSTS_SECONDS.
- Permissions-Policy: no camera, microphone, geolocation, payment, USB, ...; autoplay and
  fullscreen for this origin (the player).
"""
from __future__ import annotations

import secrets
from urllib.parse import urlparse

from flask import g, request

PERMISSIONS_POLICY = ", ".join([
    "accelerometer=()", "autoplay=(self)", "camera=()", "display-capture=()", "fullscreen=(self)",
    "geolocation=()", "gyroscope=()", "magnetometer=()", "microphone=()", "midi=()", "payment=()",
    "publickey-credentials-get=()", "screen-wake-lock=()", "serial=()", "usb=()", "xr-spatial-tracking=()",
    "browsing-topics=()", "interest-cohort=()",
])
DASHBOARD_BLUEPRINT = "rq_dashboard"


def _origin(url: str | None, default_scheme: str = "https") -> str | None:
    if not url:
        return None
    parsed = urlparse(url if "://" in url else f"{default_scheme}://{url}")
    if not parsed.hostname:
        return None
    return f"{parsed.scheme}://{parsed.netloc.rsplit('@', 1)[-1]}"


def storage_origins(config) -> list[str]:
    """Where presigned storage URLs point (S3 / MinIO / R2), so images and audio may load from there."""
    origins = []
    public = _origin(config.STORAGE_PUBLIC_URL, "http")
    if public:
        origins.append(public)
    parsed = urlparse(config.STORAGE_URL or "")
    if parsed.scheme in {"s3", "minio"} and parsed.hostname:
        secure = "secure=false" not in (parsed.query or "").lower() and "secure=0" not in (parsed.query or "")
        host = parsed.hostname + (f":{parsed.port}" if parsed.port else "")
        origins.append(f"{'https' if secure else 'http'}://{host}")
    return list(dict.fromkeys(origins))


def content_security_policy(config, nonce: str | None = None) -> str:
    media = " ".join(["'self'", "data:", "blob:", *storage_origins(config)])
    forms = ["'self'", "https://polar.sh", "https://*.polar.sh"]
    polar_api = _origin(config.POLAR_API_URL)
    if polar_api:
        forms.append(polar_api)
    scripts = "'self'" + (f" 'nonce-{nonce}'" if nonce else "")
    return "; ".join([
        "default-src 'self'",
        f"script-src {scripts}",
        "script-src-attr 'none'",
        "style-src 'self'",
        "style-src-attr 'unsafe-inline'",
        f"img-src {media}",
        f"media-src {media}",
        "font-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        f"form-action {' '.join(dict.fromkeys(forms))}",
        "frame-ancestors 'none'",
        "manifest-src 'self'",
        "worker-src 'self'",
    ])


DASHBOARD_POLICY = ("default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval'; "
                    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; "
                    "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'")


def csp_nonce() -> str:
    """A nonce for this response's CSP, for an inline <script nonce="{{ csp_nonce() }}">."""
    if "csp_nonce" not in g:
        g.csp_nonce = secrets.token_urlsafe(16)
    return g.csp_nonce


def install(app, config) -> None:
    policy = content_security_policy(config)
    hsts = int(getattr(config, "HSTS_SECONDS", 0) or 0)

    @app.after_request
    def _security_headers(response):
        if request.blueprint == DASHBOARD_BLUEPRINT:
            response.headers["Content-Security-Policy"] = DASHBOARD_POLICY
        else:
            nonce = g.get("csp_nonce")
            response.headers["Content-Security-Policy"] = (content_security_policy(config, nonce)
                                                           if nonce else policy)
        response.headers["Permissions-Policy"] = PERMISSIONS_POLICY
        response.headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        if hsts and request.is_secure:
            response.headers["Strict-Transport-Security"] = f"max-age={hsts}; includeSubDomains"
        return response

    app.jinja_env.globals["csp_nonce"] = csp_nonce
