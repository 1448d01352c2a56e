"""Anchors of the audit hash chain: its head (seq and hash), written outside the record store.

A chain verifies link by link, so removing its last entries leaves a shorter chain that still
verifies; an anchor says "the chain had reached seq N with hash H" somewhere the database's
owner does not rewrite with it: a file of JSON lines (`CDS_AUDIT_ANCHOR_FILE`, best on other
storage) and the log (`audit anchor`, shipped to the SIEM). Written every `every` entries this
process appended, and when the store closes.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Anchor", "AnchorLog", "read_anchors"]

log = logging.getLogger("cds.audit")


@dataclass(frozen=True)
class Anchor:
    seq: int
    hash: str
    at: float = 0.0


class AnchorLog:
    def __init__(self, path: Path | None, *, every: int = 100) -> None:
        self.path = path
        self.every = max(1, every)
        self._lock = threading.Lock()
        self._head: Anchor | None = None
        self._written: Anchor | None = None
        self._since = 0

    def note(self, seq: int, digest: str) -> None:
        """An entry this process committed; every `every` of them, an anchor."""
        with self._lock:
            if self._head is None or seq > self._head.seq:
                self._head = Anchor(seq, digest)
            self._since += 1
            due = self._since >= self.every
        if due:
            self.write()

    def write(self) -> Anchor | None:
        """Anchor the latest head this process saw (nothing when it is anchored already)."""
        with self._lock:
            head = self._head
            if head is None or head == self._written:
                return None
            self._written, self._since = head, 0
        anchor = Anchor(head.seq, head.hash, round(time.time(), 3))
        log.info("audit anchor", extra={"event": {"seq": anchor.seq, "hash": anchor.hash}})
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            line = json.dumps({"seq": anchor.seq, "hash": anchor.hash, "at": anchor.at}) + "\n"
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, line.encode())  # one write of a short line: whole, even with other workers
            finally:
                os.close(fd)
        return anchor


def read_anchors(path: Path) -> list[Anchor]:
    """The anchors in a file (none when it does not exist); a line that does not parse is skipped."""
    if not path.exists():
        return []
    found = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            item = json.loads(line)
            found.append(Anchor(int(item["seq"]), str(item["hash"]), float(item.get("at", 0.0))))
        except (ValueError, KeyError, TypeError):
            continue
    return found
