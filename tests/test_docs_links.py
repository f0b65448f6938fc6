"""Every link between the project's Markdown pages leads somewhere: the file exists, and a `#anchor` is the
GitHub anchor of one of its headings (a renamed heading breaks the links to it without a word).

    python -m pytest tests/test_docs_links.py
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped but hyphens and underscores, spaces to
    hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))  # a `# comment` in a code block is no heading
    return {anchor(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.M)}


def links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return [target for target in LINK.findall(text) if not re.match(r"[a-z]+:", target)]  # not http:, mailto:


def test_the_anchor_is_githubs():
    assert anchor("Queries in blocks (2026-12-06): the LaFFi set at 1.90x, SFT at 2.01x") == \
        "queries-in-blocks-2026-12-06-the-laffi-set-at-190x-sft-at-201x"
    assert anchor("Does feedback beat SFT? (`laffi experiment`)") == "does-feedback-beat-sft-laffi-experiment"


def test_every_link_between_pages_leads_to_a_file_and_a_heading():
    broken = []
    for page in PAGES:
        for target in links(page):
            path, _, fragment = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif fragment and file.suffix == ".md" and fragment not in anchors(file):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)
