"""The run's output folder: checked before anything is written, locked while a run uses it, saved atomically.

- `check_output_dir` refuses a path that is a file, a folder of someone else's files, or one that cannot
  be written, and a folder another live run holds, before the run reads or writes anything.
- `RunLock` is `output_dir/.lock` (pid and host), created with O_CREAT | O_EXCL: a second run is
  refused naming it; a lock whose process no longer exists on this host (a killed run) is stale and
  taken over.
- `atomic_save` writes a model folder into a temporary sibling and renames it into place, so a
  failed save keeps the previous folder whole.
- `disk_full` turns "no space left on device", however deep in a library's exception chain, into
  one message naming the path, the space needed and the space free; `held_stderr` keeps back what
  orbax's and tensorstore's threads print while a failing save unwinds.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

LOCK_NAME = ".lock"
# Written when a run creates its output folder: the folder is a flaxenc run's, safe to resume into.
MARKER_NAME = ".flaxenc-run"


class OutputError(RuntimeError):
    """An output folder that cannot be used (a file, foreign files, not writable, in use) or a failed write."""


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_dir(path: Path) -> None:
    """Refuses an unusable output_dir; reads only (nothing is created here)."""
    if path.exists() and not path.is_dir():
        raise OutputError(f"output_dir {path}: is a file, not a folder; choose another output_dir")
    if path.is_dir():
        entries = sorted(entry.name for entry in path.iterdir())
        ours = MARKER_NAME in entries or "checkpoints" in entries  # (runs older than the marker have checkpoints/)
        if entries and not ours:
            shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
            raise OutputError(
                f"output_dir {path}: holds files no flaxenc run wrote ({shown}); a run writes config.yaml, final/ "
                "and more there: choose a new or empty folder"
            )
        where = path
    else:
        where = _nearest_existing(path)
        if not where.is_dir():
            raise OutputError(f"output_dir {path}: {where} is a file, so the folder cannot be created; choose another output_dir")
    if not os.access(where, os.W_OK | os.X_OK):
        raise OutputError(f"output_dir {path}: {where} is not writable; choose a folder you can write to")
    holder = RunLock(path).live_holder()
    if holder is not None:
        raise OutputError(RunLock(path).in_use_message(holder))


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """`directory/.lock`, holding the pid and host of the run using the folder."""

    def __init__(self, directory: Path):
        self.path = Path(directory) / LOCK_NAME
        self.held = False

    def _read(self) -> dict | None:
        try:
            holder = json.loads(self.path.read_text(encoding="utf-8"))
            return holder if isinstance(holder, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # unreadable or half-written: treat as held, unless its age says otherwise

    def live_holder(self) -> dict | None:
        """The lock's holder if that run is still alive (or may be: another host); None if free or stale."""
        holder = self._read()
        if holder is None:
            return None
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            return holder if _process_exists(holder["pid"]) else None
        return holder

    def in_use_message(self, holder: dict) -> str:
        who = f"process {holder.get('pid', '?')} on {holder.get('host', '?')}"
        return (
            f"output_dir {self.path.parent} is in use by another run ({who}; lock file {self.path}). Wait for it to "
            f"finish or choose another output_dir; if no run is using the folder, delete {self.path}"
        )

    def acquire(self) -> None:
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname()})
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.live_holder()
                if holder is not None:
                    raise OutputError(self.in_use_message(holder)) from None
                self.path.unlink(missing_ok=True)  # stale: its run was killed
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(record)
            self.held = True
            return
        raise OutputError(self.in_use_message(self._read() or {}))

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def _no_space(error: BaseException | None) -> bool:
    """Whether "no space left on device" is anywhere in the exception's chain (tensorstore says it in text)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if _disk_full_text(str(error)):
            return True
        for inner in getattr(error, "exceptions", ()):  # an ExceptionGroup from async writers
            if _no_space(inner):
                return True
        error = error.__cause__ or error.__context__
    return False


def _disk_full_text(text: str) -> bool:
    text = text.lower()
    return "no space left on device" in text or "disk quota exceeded" in text or "resource_exhausted" in text


def _until_quiet(fd: int, quiet_s: float = 0.5, limit_s: float = 10.0) -> None:
    """Waits until nothing has been written to `fd` for quiet_s seconds (at most limit_s)."""
    size, quiet_since, start = -1, time.monotonic(), time.monotonic()
    while time.monotonic() - start < limit_s:
        now = os.fstat(fd).st_size
        if now != size:
            size, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return
        time.sleep(0.05)


@contextlib.contextmanager
def held_stderr():
    """Holds what is written to file descriptor 2 (by Python or by C++ threads) while the block runs.

    Replayed if the block succeeds; dropped if it raises, since its error then says what happened.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            _until_quiet(held.fileno())  # background writers keep failing for a while after the raise
            sys.stderr.flush()
            os.dup2(saved, 2)
            raise
        else:
            sys.stderr.flush()
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
        finally:
            os.close(saved)


def disk_full(error: BaseException, path: Path, needed_bytes: int) -> OutputError | None:
    """The one-line error for a full disk while writing `path`, or None if `error` is something else."""
    if not _no_space(error):
        return None
    try:
        free = shutil.disk_usage(_nearest_existing(path)).free
    except OSError:
        free = 0
    return OutputError(
        f"{path}: no space left on device: the save needs about {needed_bytes / 1e6:.1f} MB and "
        f"{free / 1e6:.1f} MB are free there. Free some space (or choose an output_dir on another disk), then "
        "rerun the same command: it resumes from the last checkpoint"
    )


def remove_partial_saves(directory: Path) -> None:
    """Temporary folders a killed save left behind (`.final.tmp-<pid>`, ...); called under the lock."""
    for entry in directory.glob(".*.tmp-*"):
        shutil.rmtree(entry, ignore_errors=True)
    for entry in directory.glob(".*.old-*"):
        shutil.rmtree(entry, ignore_errors=True)


def atomic_save(save: Callable[[Path], None], folder: Path, needed_bytes: int = 0) -> None:
    """`save(temporary sibling folder)`, then renamed to `folder`: a failed save leaves the old folder whole."""
    folder = Path(folder)
    temporary = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    previous = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        save(temporary)
    except Exception as error:
        shutil.rmtree(temporary, ignore_errors=True)
        full = disk_full(error, folder, needed_bytes)
        if full is not None:
            raise full from None
        if isinstance(error, OSError):
            raise OutputError(f"{folder}: the save failed ({error}); the previous {folder.name}/ is kept") from None
        raise
    if folder.exists():
        os.replace(folder, previous)
    os.replace(temporary, folder)
    shutil.rmtree(previous, ignore_errors=True)
