"""Attacks on a running `laffi serve`: no token, a wrong or revoked token, another person's item,
missing or forged CSRF tokens, a foreign Origin, script payloads in a passage and in feedback,
oversized bodies. Each must be refused with the right status code or rendered inert.

    python -m pytest tests/human/test_human_security.py
"""

from __future__ import annotations

import pytest
import requests
from support.human_helpers import add_annotator, csrf, item_id_of, laffi, make_run, serve, sign_in

PAYLOAD = '<script>window.pwned=1</script><img src=x onerror="window.pwned=2">'


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("security") / "run", n_items=6,
                   context=f"The Nile flows north. {PAYLOAD} It is long.")
    tokens = {name: add_annotator(run, name) for name in ("alice", "bob", "mallory")}
    tokens["boss"] = add_annotator(run, "boss", "--admin")
    with serve(run) as url:
        yield run, url, tokens


def test_only_the_health_check_is_open_without_a_token(app):
    _, url, _ = app
    health = requests.get(url + "healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    for path in ("annotate", "mine", "admin", "items/q000", "no-such-page"):
        response = requests.get(url + path, allow_redirects=False)
        assert response.status_code == 401, path
        assert "Sign in" in response.text and "Nile" not in response.text  # no data leaks
    for path in ("items/q000", "skip/q000", "logout"):
        response = requests.post(url + path, data={"verdict": "correct", "text": "x"}, allow_redirects=False)
        assert response.status_code == 401, path


def test_wrong_and_revoked_tokens_are_refused(app):
    run, url, tokens = app
    session = requests.Session()
    page = session.get(url)
    refused = session.post(url, data={"token": "laffi_guessed", "csrf_token": csrf(page.text)})
    assert refused.status_code == 401 and "Unknown token." in refused.text
    cookie_only = requests.get(url + "annotate", cookies={"laffi_token": "laffi_guessed"})
    assert cookie_only.status_code == 401

    mallory = sign_in(url, tokens["mallory"])
    assert mallory.get(url + "annotate").status_code == 200
    assert laffi("annotators", "revoke", "mallory", "--run", str(run))[0] == 0
    after = mallory.get(url + "annotate", allow_redirects=False)  # same cookie, next request
    assert after.status_code == 401 and "This token was revoked." in after.text
    session = requests.Session()
    page = session.get(url)
    again = session.post(url, data={"token": tokens["mallory"], "csrf_token": csrf(page.text)})
    assert again.status_code == 401


def test_people_see_and_change_only_their_own_items(app):
    _, url, tokens = app
    alice, bob = sign_in(url, tokens["alice"]), sign_in(url, tokens["bob"])
    alices = alice.get(url + "annotate")
    item = item_id_of(alices)
    bobs_csrf = csrf(bob.get(url + "annotate").text)
    assert bob.get(url + f"items/{item}").status_code == 403
    steal = bob.post(url + f"items/{item}", data={"csrf_token": bobs_csrf, "verdict": "correct", "text": "mine now"})
    assert steal.status_code == 403 and "not assigned to you" in steal.text
    assert bob.post(url + f"skip/{item}", data={"csrf_token": bobs_csrf}).status_code == 403
    assert bob.get(url + "items/no-such-item").status_code == 404
    assert bob.get(url + "admin").status_code == 403  # annotators are not admins
    # alice's CSRF token is useless in bob's session: tokens are bound to the signed-in person
    assert bob.post(url + f"items/{item_id_of(bob.get(url + 'annotate'))}",
                    data={"csrf_token": csrf(alices.text), "verdict": "correct", "text": "x"}).status_code == 403
    boss = sign_in(url, tokens["boss"])
    assert boss.get(url + "admin").status_code == 200


def test_forms_need_the_csrf_token_and_our_origin(app):
    _, url, tokens = app
    alice = sign_in(url, tokens["alice"])
    page = alice.get(url + "annotate")
    item, token = item_id_of(page), csrf(page.text)
    form = {"verdict": "correct", "text": "Fine."}
    missing = alice.post(url + f"items/{item}", data=form)
    assert missing.status_code == 403 and "CSRF" in missing.text
    assert alice.post(url + f"items/{item}", data={**form, "csrf_token": "0" * 64}).status_code == 403
    foreign = alice.post(url + f"items/{item}", data={**form, "csrf_token": token},
                         headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 403
    assert alice.post(url + "logout", data={}).status_code == 403
    # a sign-in form post without the matching sign-in cookie (login CSRF)
    assert requests.post(url, data={"token": tokens["alice"], "csrf_token": "forged"}).status_code == 403
    assert alice.get(url + f"items/{item}").status_code == 200  # nothing above changed the item
    assert "You already sent feedback" not in alice.get(url + f"items/{item}").text


def test_script_payloads_in_passages_and_feedback_are_inert(app):
    _, url, tokens = app
    alice = sign_in(url, tokens["alice"])
    page = alice.get(url + "annotate")
    item = item_id_of(page)
    assert PAYLOAD not in page.text and "<img src=x" not in page.text
    assert "&lt;script&gt;window.pwned=1&lt;/script&gt;" in page.text
    assert "script-src 'nonce-" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY" and page.headers["X-Content-Type-Options"] == "nosniff"
    saved = alice.post(url + f"items/{item}", data={"csrf_token": csrf(page.text), "verdict": "incorrect",
                                                    "text": f"Bad {PAYLOAD}", "corrected_answer": PAYLOAD})
    assert saved.status_code == 200
    for view in (alice.get(url + "mine"), alice.get(url + f"items/{item}")):
        assert view.status_code == 200
        assert PAYLOAD not in view.text and "<img src=x" not in view.text and "&lt;img src=x" in view.text


def test_oversized_and_invalid_input_is_refused_with_a_clear_message(app):
    _, url, tokens = app
    alice = sign_in(url, tokens["alice"])
    page = alice.get(url + "annotate")
    item, token = item_id_of(page), csrf(page.text)
    huge = alice.post(url + f"items/{item}", data={"csrf_token": token, "verdict": "correct", "text": "x" * 200_000})
    assert huge.status_code == 413 and "larger than 65,536 bytes" in huge.text
    long = alice.post(url + f"items/{item}", data={"csrf_token": token, "verdict": "correct", "text": "y" * 4001})
    assert long.status_code == 400 and "4,001 characters long; the limit is 4,000" in long.text
    assert "y" * 4001 in long.text  # the person's text is kept in the form to shorten
    empty = alice.post(url + f"items/{item}", data={"csrf_token": token, "verdict": "correct", "text": "  "})
    assert empty.status_code == 400 and "Feedback is required" in empty.text
    bad = alice.post(url + f"items/{item}", data={"csrf_token": token, "verdict": "meh", "text": "ok"})
    assert bad.status_code == 400 and "Choose a verdict" in bad.text
    nul = alice.post(url + f"items/{item}", data={"csrf_token": token, "verdict": "correct", "text": "a\x00b"})
    assert nul.status_code == 400 and "control characters" in nul.text
    assert huge.headers["X-Frame-Options"] == "DENY"
    # nothing of it was stored
    assert "You already sent feedback" not in alice.get(url + f"items/{item}").text


def test_behind_an_https_proxy_named_by_trusted_proxy_forms_pass_and_the_cookie_is_secure(tmp_path):
    run = make_run(tmp_path / "run", n_items=2)
    token = add_annotator(run, "alice")
    public = "https://annot.example.org"
    # what nginx forwards: the public scheme and host; the browser's Origin is the public address
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "annot.example.org", "X-Forwarded-Port": "443",
                 "Origin": public}

    def signs_in(url: str) -> requests.Response:
        session = requests.Session()
        page = session.get(url, headers=forwarded)
        return session.post(url, data={"token": token, "csrf_token": csrf(page.text)}, headers=forwarded,
                            allow_redirects=False)

    with serve(run) as url:  # not trusted: the app is at http://127.0.0.1, so the public Origin is another site's
        assert signs_in(url).status_code == 403
    with serve(run, "--trusted-proxy", "127.0.0.1") as url:  # the test client is the proxy
        signed = signs_in(url)
        assert signed.status_code in (200, 303), signed.text[:300]
        assert "secure" in signed.headers["Set-Cookie"].lower()
