"""End to end in a real browser: headless Chromium (Debian's chromium + chromium-driver, driven by
Selenium) signs in with a token, annotates three items (keyboard and mouse), skips one, and the
exported feedback holds exactly those three.

    python -m pytest tests/human/test_human_browser.py
"""

from __future__ import annotations

import time
from dataclasses import replace

from support.human_helpers import add_annotator, laffi, make_run, serve

from laffi.records import Feedback, read_records

PAYLOAD = '<script>window.pwned=1</script><img src=x onerror="window.pwned=2">'


def test_sign_in_annotate_three_items_and_export_exactly_those(tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    started = time.time()

    run = make_run(tmp_path / "run", n_items=6, context=f"The Nile flows north. {PAYLOAD}")
    token = add_annotator(run, "alice")
    browser.implicitly_wait(5)  # the app's pages load after each click
    wait = WebDriverWait(browser, 10)

    def on_item(previous: str | None) -> str:
        wait.until(lambda d: "/items/" in d.current_url and d.current_url.split("/items/")[1].split("?")[0] != previous)
        return browser.current_url.split("/items/")[1].split("?")[0]

    with serve(run) as url:
        browser.get(url)
        assert "Sign in" in browser.title
        browser.find_element(By.ID, "token").send_keys(token + Keys.ENTER)
        first = on_item(None)

        # The passage's script and image payload show as text and never ran.
        assert PAYLOAD in browser.find_element(By.ID, "passage").text
        assert browser.execute_script("return window.pwned === undefined")
        assert browser.find_element(By.ID, "answer").text == "south"

        # 1: all keyboard: "3" picks "incorrect" and moves to the text box, Ctrl+Enter submits.
        browser.find_element(By.TAG_NAME, "body").send_keys("3")
        wait.until(lambda d: d.switch_to.active_element.get_attribute("id") == "text")
        browser.switch_to.active_element.send_keys("The Nile flows north, not south. <b>bold?</b>")
        browser.switch_to.active_element.send_keys(Keys.CONTROL, Keys.ENTER)
        second = on_item(first)
        assert browser.find_element(By.ID, "saved").is_displayed()

        # 2: the mouse, with a corrected answer.
        browser.find_element(By.ID, "verdict-1").click()
        browser.find_element(By.ID, "text").send_keys("Correct and short.")
        browser.find_element(By.ID, "corrected_answer").send_keys("north")
        browser.find_element(By.ID, "submit").click()
        third = on_item(second)

        # a skip ("s") is not feedback
        browser.find_element(By.TAG_NAME, "body").send_keys("s")
        fourth = on_item(third)

        # 3: keyboard again, partially correct
        browser.find_element(By.TAG_NAME, "body").send_keys("2")
        wait.until(lambda d: d.switch_to.active_element.get_attribute("id") == "text")
        browser.switch_to.active_element.send_keys("Half right.", Keys.CONTROL, Keys.ENTER)
        on_item(fourth)

        progress = browser.find_element(By.ID, "progress").text
        assert "You: 3 done, 1 skipped" in progress
        browser.get(url + "mine")
        wait.until(ready.presence_of_element_located((By.ID, "mine")))
        assert "<b>bold?</b>" in browser.find_element(By.ID, "mine").text  # shown as text
        browser.save_screenshot(str(tmp_path / "mine.png"))

    code, out, err = laffi("export-feedback", str(run))
    assert code == 0, err
    exported = read_records(run / "feedback.human.jsonl", Feedback)
    assert all(started < f.submitted_at < time.time() for f in exported)
    assert [replace(f, submitted_at=None) for f in exported] == [
        Feedback(first, "south", "incorrect", "The Nile flows north, not south. <b>bold?</b>", "human", "alice"),
        Feedback(second, "north", "correct", "Correct and short.", "human", "alice", "north"),
        Feedback(fourth, "north", "partially correct", "Half right.", "human", "alice"),
    ]
    assert third not in {f.id for f in exported}
