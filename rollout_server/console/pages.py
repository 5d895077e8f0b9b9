"""The console's routes: sign-in, sign-out, and the pages (server-rendered, no script needed to read).

Every page needs a live session (:mod:`rollout_server.console.sessions`); without one it sends
the browser to the sign-in form. Every POST carries the session's CSRF token (the sign-in form a
double-submitted one) and, when the browser sends ``Origin``, must come from this server. Pages
are never cached and may not be framed; scripts and styles come only from ``/console/static``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, g, redirect, render_template, request, url_for

from rollout_server import clock
from rollout_server.console import sessions
from rollout_server.db import db
from rollout_server.models import AuditEntry

bp = Blueprint("console", __name__, url_prefix="/console", template_folder="templates",
               static_folder="static", static_url_path="/static")

F = TypeVar("F", bound=Callable[..., Any])

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def over_tls() -> bool:
    """Whether the browser reached us over TLS: directly, or through a trusted proxy that says so."""
    if request.is_secure:
        return True
    trusted = int(current_app.config.get("TRUSTED_PROXY_COUNT", 0) or 0)
    return trusted > 0 and request.headers.get("X-Forwarded-Proto", "").split(",")[-1].strip() == "https"


def same_origin() -> bool:
    """A POST's ``Origin`` (when sent) names this server: another site's form cannot post here."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc == request.host


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Frame-Options"] = "DENY"
    if request.endpoint != "console.static":
        response.headers["Cache-Control"] = "no-store"
    return response


def signed_in(view: F) -> F:
    """The view runs for a live session (``g.console``); otherwise the browser goes to sign in."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        who = sessions.current(db(), request, clock.now())
        db().commit()  # an expired session's row goes, a live one's last_seen_at moves
        if who is None:
            response = redirect(url_for("console.login", next=request.full_path.rstrip("?")), code=303)
            if request.cookies.get(sessions.COOKIE):
                sessions.clear_cookie(response, sessions.COOKIE, over_tls())
            return response
        g.console = who
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@bp.app_template_filter("pct")
def percent_text(value: float | int | None) -> str:
    """``50`` and ``50.0`` → ``50%``, ``12.5`` → ``12.5%`` (a share as people write it)."""
    return "—" if value is None else f"{round(float(value), 1):g}%"


def page(template: str, status: int = 200, **context: Any) -> Response:
    response = Response(render_template(f"console/{template}", who=getattr(g, "console", None), **context),
                        status=status, mimetype="text/html")
    return response


def _safe_next(target: str | None) -> str:
    """Only a path inside the console (no scheme, no host): a sign-in link cannot send you elsewhere."""
    if target and target.startswith("/console/") and not target.startswith("//") and "\\" not in target:
        return target
    return url_for("console.fleet")


@bp.get("/login")
def login() -> Response:
    nonce = secrets.token_urlsafe(24)
    response = page("login.html", csrf=nonce, next=_safe_next(request.args.get("next")))
    sessions.set_cookie(response, sessions.LOGIN_COOKIE, nonce, over_tls(), max_age=3600)
    return response


@bp.post("/login")
def login_post() -> Response:
    next_page = _safe_next(request.form.get("next"))
    if not same_origin() or not sessions.csrf_ok(request.cookies.get(sessions.LOGIN_COOKIE, ""),
                                                 request.form.get("csrf")):
        return _login_again("The sign-in form expired or came from another site; try again.", 400, next_page)
    now = clock.now()
    token = sessions.operator_by_secret(db(), request.form.get("token", ""), now)
    if token is None:
        return _login_again("Unknown, revoked or expired operator token.", 401, next_page)
    secret = sessions.start(db(), token, now)
    db().add(AuditEntry(actor=token.name, action="console_sign_in", target=f"token:{token.id}",
                        detail={"role": token.role}))
    db().commit()
    response = redirect(next_page, code=303)
    secure = over_tls()
    absolute, _ = sessions.lifetimes()
    sessions.set_cookie(response, sessions.COOKIE, secret, secure, max_age=int(absolute.total_seconds()))
    sessions.clear_cookie(response, sessions.LOGIN_COOKIE, secure)
    return response


def _login_again(message: str, status: int, next_page: str) -> Response:
    nonce = secrets.token_urlsafe(24)
    response = page("login.html", status=status, error=message, csrf=nonce, next=next_page)
    sessions.set_cookie(response, sessions.LOGIN_COOKIE, nonce, over_tls(), max_age=3600)
    return response


@bp.post("/logout")
@signed_in
def logout() -> Response:
    who: sessions.SignedIn = g.console
    if not same_origin() or not sessions.csrf_ok(who.csrf, request.form.get("csrf")):
        return page("error.html", status=400, message="This form expired; reload the page and try again.")
    sessions.end(db(), who)
    db().commit()
    response = redirect(url_for("console.login"), code=303)
    sessions.clear_cookie(response, sessions.COOKIE, over_tls())
    return response


def refuse_operator_form(who: sessions.SignedIn, what: str, minimum: str = "operator") -> Response | None:
    """The error page for a form that is forged, stale, from another site, or from a role below
    ``minimum``; None when it may act."""
    if not same_origin() or not sessions.csrf_ok(who.csrf, request.form.get("csrf")):
        return page("error.html", status=400, message="This form expired; reload the page and try again.")
    if not who.may(minimum):
        article = "an" if minimum[0] in "aeiou" else "a"
        return page("error.html", status=403,
                    message=f"Role {who.role!r} may not {what}; {article} {minimum} may.")
    return None
