"""What scans use: the compiled rules and the hash sets, loaded at start and reloaded on
SIGHUP or when either directory changes (checked every ``CARVE_TRIAGE_RELOAD_INTERVAL``).

Loading (compiling rules, sorting millions of digests) runs in a thread. A load that fails
keeps what was loaded before in use, and the error is kept for ``/readyz`` and the log; a
scan that started keeps the rules it started with. Until a first load succeeds no scan
starts (events wait in the queue).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from services.triage.hashsets import HashSet, HashSetError, load_hashsets
from services.triage.metrics import TriageMetrics
from services.triage.rules import RulesError, RuleSet, load_rules

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Loaded:
    rules: RuleSet
    hashsets: tuple[HashSet, ...]


def fingerprint(*directories: str) -> tuple[tuple[str, int, int], ...]:
    """Names, sizes and mtimes of the directories' files: a change means reload."""
    found: list[tuple[str, int, int]] = []
    for directory in directories:
        with contextlib.suppress(OSError):
            for entry in os.scandir(directory):
                with contextlib.suppress(OSError):
                    stat = entry.stat()  # follows ConfigMap symlinks
                    found.append((str(Path(directory, entry.name)), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(found))


class Library:
    def __init__(self, rules_dir: str, hashsets_dir: str, metrics: TriageMetrics) -> None:
        self._rules_dir = rules_dir
        self._hashsets_dir = hashsets_dir
        self._metrics = metrics
        self.current: Loaded | None = None
        self.error: str | None = None
        self.loaded_once = asyncio.Event()
        self._seen: tuple[tuple[str, int, int], ...] | None = None
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        # Told of each new rule set once it is in use (the pool sends it to idle workers).
        self.listeners: list[Callable[[Loaded], Awaitable[None]]] = []

    def _load(self) -> Loaded:
        return Loaded(load_rules(self._rules_dir), tuple(load_hashsets(self._hashsets_dir)))

    async def reload(self) -> bool:
        """Load both directories again; True if what is in use changed."""
        async with self._lock:
            seen = await asyncio.to_thread(fingerprint, self._rules_dir, self._hashsets_dir)
            try:
                loaded = await asyncio.to_thread(self._load)
            except (RulesError, HashSetError, OSError) as exc:
                self.error = str(exc)
                self._seen = seen
                self._metrics.rules_ok.set(0)
                log.error("triage rules or hash sets not loaded: %s", exc)
                return False
            self._seen = seen
            self.error = None
            self._metrics.rules_ok.set(1)
            old = self.current
            self.current = loaded
            self._metrics.rules.set(loaded.rules.count)
            for one in loaded.hashsets:
                self._metrics.hashes.labels(one.name).set(len(one))
            self.loaded_once.set()
            changed = (
                old is None
                or old.rules.version != loaded.rules.version
                or [(h.name, h.version) for h in old.hashsets]
                != [(h.name, h.version) for h in loaded.hashsets]
            )
            if changed:
                for listener in self.listeners:
                    await listener(loaded)
                log.info(
                    "triage: %d rules from %d files (version %s), hash sets %s",
                    loaded.rules.count,
                    len(loaded.rules.files),
                    loaded.rules.version[:16],
                    {h.name: len(h) for h in loaded.hashsets},
                )
            return changed

    def kick(self) -> None:
        """Reload soon (SIGHUP)."""
        self._wake.set()

    async def watch(self, interval: float) -> None:
        """Reload on ``kick`` and whenever the directories change, until cancelled."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval or None):
                    await self._wake.wait()
            if self._wake.is_set():
                self._wake.clear()
                await self.reload()
                continue
            seen = await asyncio.to_thread(fingerprint, self._rules_dir, self._hashsets_dir)
            if seen != self._seen:
                await self.reload()
