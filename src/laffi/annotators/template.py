"""The LLM annotator's prompt: a versioned YAML template file, rendered into chat messages, and the
parser that reads the reply back into a verdict, a feedback text and, where the template asks for it,
the right answer.

    from laffi.annotators.template import load_template
    template = load_template("feedback-v1")          # packaged, or a path to your own .yaml
    messages = template.render(example, answer, reference_free=False)
    verdict, text, answer = template.parse(reply)    # ReplyError when the reply does not fit

The packaged templates live in `laffi/annotators/templates/`; the file itself documents the format.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import jinja2
import yaml

from laffi.config import ConfigError
from laffi.records import VERDICTS, Answer, QAExample

TEMPLATES = Path(__file__).parent / "templates"


class TemplateError(ValueError):
    """A template file that cannot be used; the message names the file."""


class ReplyError(ValueError):
    """A reply that the template's parser cannot read."""


def template_path(name: str) -> Path:
    """A packaged template by name ("feedback-v1"), else the path of a user's file."""
    packaged = TEMPLATES / f"{name}.yaml"
    return packaged if "/" not in name and packaged.is_file() else Path(name).expanduser()


class ParsedReply(NamedTuple):
    verdict: str
    text: str
    answer: str | None  # the right answer, from the template's reply.answer; None without one


@dataclass(frozen=True)
class Template:
    version: str
    system: str
    user: str
    verdict_pattern: str
    feedback_pattern: str
    path: Path
    shots: tuple[dict, ...] = ()  # worked examples, sent as earlier chat turns (small models need them)
    # reads the right answer out of the reply (a line of its own): the feedback-guided systems' "Revised
    # answer:" field is built from it; None: the template asks for none, and that feedback names no answer
    answer_pattern: str | None = None

    def render(self, example: QAExample, answer: Answer, reference_free: bool) -> list[dict[str, str]]:
        golds = [] if reference_free else list(dict.fromkeys(g.strip() for g in example.answers if g.strip()))
        values = {"passage": example.context, "question": example.question, "title": example.title,
                  "answer": answer.prediction.strip(), "golds": golds}
        messages = [{"role": "system", "content": _render(self.system, values, self.path, "system")}]
        for n, shot in enumerate(self.shots):
            shot_values = {"title": "", **shot, "golds": [] if reference_free else shot["golds"]}
            messages.append({"role": "user", "content": _render(self.user, shot_values, self.path, f"shots[{n}]")})
            messages.append({"role": "assistant", "content": shot["reply"].strip()})
        messages.append({"role": "user", "content": _render(self.user, values, self.path, "user")})
        return [m for m in messages if m["content"]]

    def parse(self, reply: str) -> ParsedReply:
        verdict = re.search(self.verdict_pattern, reply, re.I)
        feedback = re.search(self.feedback_pattern, reply, re.I | re.S)
        if not verdict or verdict.group(1).lower() not in VERDICTS:
            raise ReplyError("no verdict (correct, partially correct or incorrect) in the reply")
        text = " ".join(feedback.group(1).split()) if feedback else ""
        if not text:
            raise ReplyError("no feedback text in the reply")
        found = re.search(self.answer_pattern, reply, re.I | re.M) if self.answer_pattern else None
        answer = found.group(1).strip().strip("\"'“”*` ").strip() if found else None
        if self.answer_pattern and not answer and verdict.group(1).lower() != "correct":
            raise ReplyError("no right answer in the reply, which the template asks for (reply.answer)")
        return ParsedReply(verdict.group(1).lower(), text, answer or None)


def _render(source: str, values: dict, path: Path, part: str) -> str:
    # StrictUndefined: a misspelt placeholder is an error, not a silently empty prompt
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)
    try:
        text = env.from_string(source).render(**values)
    except (jinja2.TemplateError, TypeError, ValueError, AttributeError, IndexError, KeyError) as error:
        # an undefined name, or an expression the values cannot take (`answer + 1`)
        raise TemplateError(f"{path}: {part}: {error}") from error
    # the YAML block keeps the blank lines that {% if %} lines leave; collapse runs of them
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def load_template(name: str, option: str = "annotate.template") -> Template:
    """The template `name`; if there is none, a ConfigError naming `option`, where the name was set."""
    path = template_path(name)
    if not path.is_file():
        packaged = ", ".join(sorted(t.stem for t in TEMPLATES.glob("*.yaml")))
        raise ConfigError(f"{option}: {name!r} is neither a packaged template ({packaged}) nor a file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise TemplateError(f"{where}: not valid YAML: {getattr(error, 'problem', None) or error}") from None
    if not isinstance(data, dict):
        raise TemplateError(f"{path}: expected a YAML mapping with version, system, user and reply")
    missing = [k for k in ("version", "user", "reply") if not data.get(k)]
    reply = data.get("reply") or {}
    if not isinstance(reply, dict):
        raise TemplateError(f"{path}: reply must be a mapping of regular expressions (verdict, feedback, answer)")
    missing += [f"reply.{k}" for k in ("verdict", "feedback") if not reply.get(k)]
    if missing:
        raise TemplateError(f"{path}: missing {', '.join(missing)}")
    for key in ("verdict", "feedback", *(["answer"] if reply.get("answer") else [])):
        if not isinstance(reply[key], str):
            raise TemplateError(f"{path}: reply.{key} must be a regular expression (a string)")
        try:
            if re.compile(reply[key]).groups < 1:
                raise TemplateError(f"{path}: reply.{key} needs a capturing group for the {key}")
        except re.error as error:
            raise TemplateError(f"{path}: reply.{key} is not a regular expression: {error}") from error
    for part in ("system", "user"):
        if not isinstance(data.get(part) or "", str):
            raise TemplateError(f"{path}: {part} must be text (a Jinja template), got {data[part]!r:.60}")
        try:
            jinja2.Environment().parse(data.get(part) or "")
        except jinja2.TemplateSyntaxError as error:
            raise TemplateError(f"{path}: {part}: line {error.lineno}: {error.message}") from error
    shots = data.get("shots") or []
    if not isinstance(shots, list):
        raise TemplateError(f"{path}: shots must be a list of worked examples, got {shots!r:.60}")
    fields = {"passage", "question", "golds", "answer", "reply"}
    for n, shot in enumerate(shots):
        if not isinstance(shot, dict) or set(shot) != fields or not isinstance(shot["golds"], list):
            raise TemplateError(f"{path}: shots[{n}] needs exactly {', '.join(sorted(fields))} (golds a list)")
        if not all(isinstance(shot[k], str) for k in fields - {"golds"}):
            raise TemplateError(f"{path}: shots[{n}]: {', '.join(sorted(fields - {'golds'}))} must be text")
    template = Template(version=str(data["version"]), system=str(data.get("system") or ""), user=str(data["user"]),
                        verdict_pattern=reply["verdict"], feedback_pattern=reply["feedback"], path=path,
                        shots=tuple(shots), answer_pattern=reply.get("answer") or None)
    # a misspelt placeholder fails here, when a command that will annotate starts, not at its first answer
    for golds in (["a gold answer"], []):  # with the reference answers, and reference-free
        values = {"passage": "A passage.", "question": "A question?", "title": "A title", "answer": "an answer",
                  "golds": golds}
        for part in ("system", "user"):
            _render(getattr(template, part), values, path, part)
    for n, shot in enumerate(shots):  # a template must read its own examples
        try:
            template.parse(shot["reply"])
        except ReplyError as error:
            raise TemplateError(f"{path}: shots[{n}].reply does not fit its reply patterns: {error}") from error
    return template
