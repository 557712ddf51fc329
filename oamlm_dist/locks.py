"""Writer locks: one writer at a time per store target (a model, a descriptor set, ...).

Two campaigns (or a campaign and an interactive command) may work on one store at once. Where
they would write the same thing — the same model, the same descriptor set, new MD segments,
ingested files — the second waits for the first and then finds its work done (done-markers),
instead of interleaving partial results. Different targets proceed in parallel.

A lock is an exclusive ``flock`` on ``STORE/locks/<target>.lock``, held by the client process
for the duration of the stage. The kernel drops it when that process dies, so a killed
campaign never leaves a stale lock behind and ``campaign resume`` just takes it again.
``flock`` spans hosts on NFSv4; on Lustre/GPFS the file system must be mounted with flock
support (``-o flock``), otherwise run one client per store.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from oamlm_dist.errors import StoreError

_UNSAFE = re.compile(r"[^A-Za-z0-9_.=+-]")


def lock_path(store_path: str | os.PathLike, target: str) -> Path:
    return Path(store_path) / "locks" / f"{_UNSAFE.sub('_', target)}.lock"


def holder(path: Path) -> str:
    """Who holds (or last held) the lock file, as one readable phrase."""
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another process"
    return (f"pid {info.get('pid', '?')} on {info.get('host', '?')} "
            f"({info.get('command', '?')}, since {info.get('since', '?')})")


@contextmanager
def writer_lock(store_path: str | os.PathLike, target: str, timeout_s: float | None = None,
                log: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the writer lock of ``target`` in the store; wait (and say so) while another has it.

    ``timeout_s=None`` waits as long as it takes; otherwise a ``StoreError`` names the holder.
    """
    path = lock_path(store_path, target)
    try:
        path.parent.mkdir(exist_ok=True)
        handle = open(path, "a+")
    except OSError as exc:
        raise StoreError(f"{store_path}: cannot create lock {path.name}: "
                         f"{exc.strerror or exc}") from exc
    try:
        if not _try_lock(handle):
            (log or _stderr)(f"{store_path}: {target} is being written by {holder(path)}; "
                             "waiting for it to finish")
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            while not _try_lock(handle):
                if deadline is not None and time.monotonic() > deadline:
                    raise StoreError(f"{store_path}: {target} is still being written by "
                                     f"{holder(path)} after {timeout_s:g} s")
                time.sleep(0.2)
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "command": " ".join(sys.argv[:3]) or "python",
                                 "since": time.strftime("%Y-%m-%dT%H:%M:%S")}))
        handle.flush()
        yield
    finally:
        handle.close()  # closing the descriptor releases the flock


def _try_lock(handle) -> bool:
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
