"""The LLM annotator's on-disk reply cache: a request already answered is never paid for twice.

    cache = ReplyCache(Path("~/.cache/laffi/llm").expanduser())
    key = cache.key({"template": "feedback-v1", "model": "gpt-4o", "messages": [...], ...})
    cache.get(key) or cache.put(key, request, reply)

One JSON file per request, `DIR/ab/abcdef....json`, holding the request and the reply, so the cache
can be read, copied between machines and pruned by hand. The key is the SHA-256 of the request
(template version, backend, model, the rendered messages, decoding settings, attempt number), so
anything that changes the reply changes the key. A file is written to a temporary name and
renamed into place: a killed run leaves whole entries or none, never a torn one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from laffi.records import write_atomic


class ReplyCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @staticmethod
    def key(request: dict[str, Any]) -> str:
        canonical = json.dumps(request, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        try:
            return json.loads(path.read_text(encoding="utf-8"))["reply"]
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, KeyError):  # written by something else; ask again and overwrite
            return None

    def put(self, key: str, request: dict[str, Any], reply: dict[str, Any]) -> None:
        write_atomic(self._path(key), json.dumps({"request": request, "reply": reply}, ensure_ascii=False))
