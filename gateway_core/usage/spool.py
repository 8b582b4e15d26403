"""The spool: append-only files of records the database could not take yet (JSON lines).

The usage log spools its records here, and the billing writer its billing records: any entry with a
``to_json()`` method, read back with the decoder the spool is made with. Records are appended to the
*active segment* of this process and forced to disk (``fsync``) with each append. A segment is
replayed once it is closed: :meth:`Spool.rotate` closes the active one.
Several processes may share a spool folder (the workers of one server): a segment is locked
(``flock``) by the process writing or replaying it, and a segment is named only once it is locked, so
no process replays a file another is still writing. A segment replayed completely is deleted; one the
database refuses is renamed ``*.failed`` and left for an operator.

A spool belongs to the deployment, not to one database URL: its records are replayed into the database
configured now, whatever host, port or name they were spooled under (their ``event_id`` makes a
replay idempotent). Older versions kept a subfolder per database URL (``postgres-<digest>``); the
segments of such subfolders are replayed too, and an emptied subfolder is removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Generic, Protocol, TypeVar

try:
    import fcntl
except ImportError:  # not POSIX: segments are not locked, so give each process a folder of its own
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("lockgate.usage")

SUFFIX = ".jsonl"
FAILED_SUFFIX = ".failed"
#: The subfolders older versions spooled to, one per database URL (its dialect and a digest of it).
LEGACY_FOLDER = re.compile(r"(sqlite|postgres)-[0-9a-f]{12}")
#: A segment this large is closed and a new one started, so replays make progress in steps.
MAX_SEGMENT_BYTES = 16 * 1024 * 1024


class SpoolEntry(Protocol):
    def to_json(self) -> bytes:
        """The entry as one line of JSON (without the newline)."""
        ...


E = TypeVar("E", bound=SpoolEntry)


class Spool(Generic[E]):
    """The spool folder of one process. Thread-safe: appends may come from worker threads and the loop.

    ``decode`` turns a line back into an entry; it raises ``ValueError`` (or ``TypeError``/``KeyError``)
    for a malformed line.
    """

    def __init__(self, folder: Path, decode: Callable[[bytes], E]) -> None:
        self.folder = folder
        self.decode = decode
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None
        self._size = 0
        self._sequence = 0

    def append(self, entries: Sequence[E]) -> Path | None:
        """Write ``entries`` to the active segment and force them to disk; raises ``OSError``.

        Returns the segment written to (None when there was nothing to write).
        """
        if not entries:
            return None
        data = b"".join(entry.to_json() + b"\n" for entry in entries)
        with self._lock:
            fd = self._active()
            path = self._path
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
            self._size += len(data)
            if self._size >= MAX_SEGMENT_BYTES:
                self._close_active()
        return path

    def rotate(self) -> None:
        """Close the active segment, so it can be replayed; the next append starts a new one."""
        with self._lock:
            self._close_active()

    def close(self) -> None:
        self.rotate()

    def segments(self) -> list[Path]:
        """The segments of every process, oldest first (those of older versions' subfolders too)."""
        found = [path for folder in self._folders() for path in _listed(folder, SUFFIX)]
        return sorted(found, key=lambda path: path.name)  # names start with their creation time

    def peek(self) -> list[E]:
        """Every record the segments hold now, without claiming them (a budget rebuild counts what is
        not in the database yet); malformed lines and segments gone meanwhile are skipped."""
        entries: list[E] = []
        for path in self.segments():
            try:
                with path.open("rb") as file:
                    for line in file:
                        with contextlib.suppress(ValueError, TypeError, KeyError):
                            if line.strip():
                                entries.append(self.decode(line))
            except OSError:
                continue
        return entries

    def failed_segments(self) -> list[Path]:
        return sorted(path for folder in self._folders() for path in _listed(folder, FAILED_SUFFIX))

    def prune(self) -> None:
        """Remove the subfolders of older versions once they are empty."""
        for folder in self._folders()[1:]:
            with contextlib.suppress(OSError):  # not empty, or gone
                folder.rmdir()

    def _folders(self) -> list[Path]:
        """The spool folder, then its subfolders of older versions (one per database URL)."""
        try:
            subfolders = sorted(
                Path(entry.path)
                for entry in os.scandir(self.folder)
                if LEGACY_FOLDER.fullmatch(entry.name) and entry.is_dir()
            )
        except FileNotFoundError:
            return []
        return [self.folder, *subfolders]

    @contextlib.contextmanager
    def claim(self, path: Path) -> Iterator[Segment[E] | None]:
        """Lock a closed segment for replay; yields None when another process holds it or it is gone."""
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            yield None
            return
        try:
            if not _try_lock(fd) or os.fstat(fd).st_nlink == 0:  # busy, or replayed and deleted meanwhile
                yield None
                return
            yield Segment(path, fd, self.decode)
        finally:
            os.close(fd)  # releases the lock

    # --- the active segment -----------------------------------------------------------------------

    def _active(self) -> int:
        if self._fd is not None:
            return self._fd
        self.folder.mkdir(parents=True, exist_ok=True)
        self._sequence += 1
        name = f"{time.time_ns():020d}-{os.getpid()}-{self._sequence:06d}"
        # Created under a name replays ignore, locked, then renamed: never seen unlocked.
        temporary = self.folder / f".{name}.tmp"
        fd = os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_APPEND, 0o600)
        path = self.folder / f"{name}{SUFFIX}"
        try:
            _try_lock(fd)
            os.rename(temporary, path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise
        self._fd, self._path, self._size = fd, path, 0
        return fd

    def _close_active(self) -> None:
        fd, self._fd, self._path = self._fd, None, None
        if fd is not None:
            os.close(fd)


class Segment(Generic[E]):
    """A closed segment locked by this process for replay."""

    def __init__(self, path: Path, fd: int, decode: Callable[[bytes], E]) -> None:
        self.path = path
        self._fd = fd
        self._decode = decode

    def read(self) -> tuple[list[E], int]:
        """The segment's records in order, and the number of malformed lines skipped (a torn last line
        after a crash)."""
        with os.fdopen(os.dup(self._fd), "rb") as file:
            entries: list[E] = []
            malformed = 0
            for line in file:
                if not line.strip():
                    continue
                try:
                    entries.append(self._decode(line))
                except (ValueError, TypeError, KeyError):
                    malformed += 1
        return entries, malformed

    def remove(self) -> None:
        """Delete the replayed segment."""
        self.path.unlink(missing_ok=True)

    def set_aside(self) -> Path:
        """Rename the segment ``*.failed`` so it is not replayed again."""
        target = self.path.with_suffix(FAILED_SUFFIX)
        os.rename(self.path, target)
        return target


def _listed(folder: Path, suffix: str) -> list[Path]:
    try:
        return [folder / entry.name for entry in os.scandir(folder) if entry.name.endswith(suffix)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _try_lock(fd: int) -> bool:
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
