"""The instructor's generation cache: every finished batch of `summarize` on disk, so a killed run resumes.

`summarize(..., store=GenerationCache(path))` saves each batch as one JSON line, flushed and fsynced, keyed by
the prompts, the batches, the generation settings and the model's weights; run again after a crash, the finished
batches are read back and only the rest is generated. Batches are the same as in an uninterrupted run, so the
summaries are identical too (docs/resumable-evaluation.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

from ..models import fingerprint


class GenerationCache:
    """A .jsonl file of finished batches (a `generation.BatchStore`)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.key = ""

    def restore(self, model, prompts: list[str], batches: list[list[int]], settings: list) -> dict[int, list[str]]:
        """The finished batches of this very generation; a cache of other inputs, or a torn last line, is dropped."""
        self.key = hashlib.sha256(json.dumps([prompts, batches, settings, fingerprint(model)]).encode()).hexdigest()[
            :16
        ]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.is_file():
            self.path.write_text("")
            return {}
        raw = self.path.read_bytes()
        complete = raw[: raw.rfind(b"\n") + 1]  # a kill mid-write leaves a partial last line: drop it
        done: dict[int, list[str]] = {}
        for line in complete.decode("utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(line)
                b, texts, key = entry["batch"], entry["summaries"], entry["key"]
                valid = isinstance(b, int) and isinstance(texts, list) and all(isinstance(t, str) for t in texts)
            except (ValueError, TypeError, KeyError):
                valid = False
            if not valid:  # damaged (not a torn last line: something else wrote here): keep it aside, start over
                aside = self.path.with_name(self.path.name + ".damaged")
                self.path.replace(aside)
                warnings.warn(
                    f"the generation cache {self.path} had a damaged line; moved it to {aside}, generating again",
                    stacklevel=3,
                )
                self.path.write_text("")
                return {}
            if key != self.key:
                self.path.write_text("")  # written for other prompts, model or settings: start over
                return {}
            if 0 <= b < len(batches) and len(texts) == len(batches[b]):
                done[b] = texts
        if len(complete) != len(raw):
            self.path.write_bytes(complete)
        return done

    def save(self, batch: int, summaries: list[str]) -> None:
        """Append one finished batch, on disk before the next starts: a kill loses at most the batch in progress."""
        with open(self.path, "a", encoding="utf-8") as sink:
            sink.write(json.dumps({"key": self.key, "batch": batch, "summaries": summaries}) + "\n")
            sink.flush()
            os.fsync(sink.fileno())
