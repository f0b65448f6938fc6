"""The annotation web app (Flask, server-rendered pages). Run it with `laffi serve RUN_DIR`.

Pages: / (sign in), /annotate (your next item), /items/<id> (an item's form, also to edit your
feedback), /mine (your feedback), /admin (progress per person, agreement), /healthz (with the sign-in
page, the only ones open without a token). Keyboard: 1/2/3 pick the verdict and jump to the text,
Ctrl+Enter submits, s skips.

    create_app(ServeConfig(run_dir="runs/demo"), engine)
"""

from __future__ import annotations

import re
import secrets
import unicodedata

from flask import Flask, g, redirect, render_template, request, url_for
from markupsafe import Markup, escape
from sqlalchemy import Engine, text
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from laffi.human import exchange, security, store
from laffi.human.config import ServeConfig
from laffi.records import VERDICTS

PUBLIC = {"healthz", "login"}


def highlight(context: str, answer: str) -> Markup:
    """The passage, escaped, with the first occurrence of the answer marked."""
    # matched in the passage itself: lowercasing a copy can change its length ("İ" is two characters lower)
    found = re.search(re.escape(answer), context, re.IGNORECASE) if answer.strip() else None
    if found is None:
        return escape(context)
    start, end = found.span()
    return escape(context[:start]) + Markup("<mark>") + escape(context[start:end]) + Markup("</mark>") + \
        escape(context[end:])


def _clean(value: str, field: str, limit: int, required: bool) -> str:
    value = value.replace("\r\n", "\n").strip()
    if required and not value:
        raise store.StoreError(f"{field} is required.")
    if len(value) > limit:
        raise store.StoreError(f"{field} is {len(value):,} characters long; the limit is {limit:,}.")
    # NUL and other control characters: PostgreSQL refuses NUL, and none belongs in feedback.
    if any(unicodedata.category(c) == "Cc" and c not in "\n\t" for c in value):
        raise store.StoreError(f"{field} contains control characters.")
    return value


def create_app(config: ServeConfig, engine: Engine) -> Flask:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.jinja_env.filters["highlight"] = highlight
    secret = store.secret(engine)

    def page(template: str, status: int = 200, **values):
        return render_template(template, nonce=g.nonce, person=g.get("person"), csrf=g.get("csrf", ""),
                               config=config, **values), status

    def login_page(message: str, status: int = 401):
        # Reuse the browser's sign-in nonce: its other requests (favicon.ico) also get this page,
        # and a fresh cookie from them would no longer match the form the person is filling in.
        nonce = request.cookies.get(security.LOGIN_COOKIE) or security.new_login_nonce()
        body, _ = page("login.html", message=message, login_nonce=nonce)
        response = app.make_response((body, status))
        response.headers["WWW-Authenticate"] = 'Cookie realm="laffi", cookie-name="laffi_token"'
        response.set_cookie(security.LOGIN_COOKIE, nonce, httponly=True, samesite="Strict")
        return response

    @app.before_request
    def authenticate():
        g.nonce = secrets.token_urlsafe(16)
        if request.endpoint in PUBLIC:
            return None
        person, reason = store.authenticate(engine, request.cookies.get(security.TOKEN_COOKIE, ""))
        if person is None:
            return login_page(reason)
        g.person = person
        g.csrf = security.csrf_token(secret, store.hash_token(request.cookies[security.TOKEN_COOKIE]))
        if request.method == "POST":
            if not security.same_origin(request.headers.get("Origin"), request.host_url):
                return page("error.html", 403, message="This form was sent from another site.")
            if not security.csrf_ok(g.csrf, request.form.get(security.CSRF_FIELD)):
                return page("error.html", 403, message="Missing or invalid CSRF token; reload the page and retry.")
        return None

    @app.after_request
    def headers(response):
        response.headers.update(security.security_headers(g.get("nonce", "none")))
        return response

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_error):
        g.setdefault("nonce", secrets.token_urlsafe(16))
        return page("error.html", 413, message=(
            f"The request is larger than {config.max_body_bytes:,} bytes. Feedback may be up to "
            f"{config.max_feedback_chars:,} characters and the corrected answer up to "
            f"{config.max_answer_chars:,}."))

    @app.errorhandler(store.StoreError)
    def refused(error: store.StoreError):
        return page("error.html", error.status, message=str(error))

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        g.setdefault("nonce", secrets.token_urlsafe(16))
        return page("error.html", error.code or 500, message=error.description)

    @app.get("/healthz")
    def healthz():
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return {"status": "ok"}

    @app.route("/", methods=["GET", "POST"], endpoint="login")
    def login():
        if request.method == "GET":
            person, reason = store.authenticate(engine, request.cookies.get(security.TOKEN_COOKIE, ""))
            if person is None:
                return login_page(reason)
            return redirect(url_for("admin" if person.is_admin else "annotate"), 303)
        if not security.same_origin(request.headers.get("Origin"), request.host_url) or not security.csrf_ok(
                request.cookies.get(security.LOGIN_COOKIE, ""), request.form.get(security.CSRF_FIELD)):
            return login_page("The sign-in form expired; please try again.", 403)
        token = request.form.get("token", "").strip()
        person, reason = store.authenticate(engine, token)
        if person is None:
            return login_page(reason)
        # Admins land on the admin page: opening /annotate would hand them an item.
        response = redirect(url_for("admin" if person.is_admin else "annotate"), 303)
        response.set_cookie(security.TOKEN_COOKIE, token, httponly=True, samesite="Strict",
                            secure=request.is_secure)
        response.delete_cookie(security.LOGIN_COOKIE)
        return response

    @app.post("/logout")
    def logout():
        response = redirect(url_for("login"), 303)
        response.delete_cookie(security.TOKEN_COOKIE)
        return response

    @app.get("/annotate")
    def annotate():
        item_id = store.claim(engine, g.person.id, config.per_item)
        if item_id is None:
            return page("done.html", progress=store.progress(engine, g.person.id, config.per_item))
        return redirect(url_for("item", item_id=item_id, saved=request.args.get("saved")), 303)

    def item_page(item_id: str, status: int = 200, error: str = "", form: dict | None = None):
        annotation = store.get_annotation(engine, g.person.id, item_id)
        if annotation.status == "skipped":
            raise store.Conflict("You skipped this item; it has gone back to the pool.")
        return page("item.html", status, item=store.get_item(engine, item_id), annotation=annotation,
                    verdicts=VERDICTS, error=error, form=form or {}, saved=request.args.get("saved"),
                    progress=store.progress(engine, g.person.id, config.per_item))

    @app.get("/items/<path:item_id>")
    def item(item_id: str):
        return item_page(item_id)

    @app.post("/items/<path:item_id>")
    def save(item_id: str):
        form = {k: request.form.get(k, "") for k in ("verdict", "text", "corrected_answer")}
        try:
            feedback = _clean(form["text"], "Feedback", config.max_feedback_chars, required=True)
            corrected = _clean(form["corrected_answer"], "The corrected answer", config.max_answer_chars,
                               required=False)
            if form["verdict"] not in VERDICTS:
                raise store.StoreError("Choose a verdict: correct, partially correct or incorrect.")
        except store.StoreError as error:
            return item_page(item_id, 400, str(error), form)
        was = store.get_annotation(engine, g.person.id, item_id).status
        store.submit(engine, g.person.id, item_id, form["verdict"], feedback, corrected or None)
        if was == "done":
            return redirect(url_for("mine"), 303)
        return redirect(url_for("annotate", saved=item_id), 303)

    @app.post("/skip/<path:item_id>")
    def skip(item_id: str):
        store.skip(engine, g.person.id, item_id)
        return redirect(url_for("annotate"), 303)

    @app.get("/mine")
    def mine():
        return page("mine.html", rows=store.my_annotations(engine, g.person.id),
                    progress=store.progress(engine, g.person.id, config.per_item))

    @app.get("/admin")
    def admin():
        if not g.person.is_admin:
            return page("error.html", 403, message="The admin page needs an admin token.")
        human = [exchange.to_feedback(a) for a in store.done_annotations(engine)]
        report = exchange.agreement_report(human, exchange.ai_feedback(config.run_dir))
        return page("admin.html", people=store.list_annotators(engine), report=report,
                    progress=store.progress(engine, g.person.id, config.per_item))

    return app
