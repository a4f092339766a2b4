"""Bounded memory: a trace's values moved to memory-mapped files once they pass a budget.

Model A must finish before model B starts, and alignment needs both traces, so
the first side's activations wait for the second.  Once the values recorded
pass ``max_memory``, each further one is written, as it is recorded
(:meth:`Spill.capturing`), to an ``.npy`` file in a private temporary
directory and read back as a read-only memory map: the values are the same
bytes, so the report is identical, but they live in the page cache (which the
kernel can drop and reread) instead of the process's heap.  After a pair is
compared, :func:`release` drops its pages from the process again.

The directory goes when the comparison ends, also on an error, Ctrl-C (SIGINT)
or SIGTERM (a CI time-out, ``docker stop``): while one exists, a SIGTERM handler
removes every live spill directory and then hands the signal on to the handler
there was before (the default one ends the process as SIGTERM would have).  A
write that fails (disk full, a read-only temporary directory) is a
:class:`~parity.errors.SpillError` naming the directory.
"""

from __future__ import annotations

import errno
import mmap
import os
import re
import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import InputError, SpillError
from .records import Trace

__all__ = ["parse_max_memory", "default_max_memory", "trace_nbytes", "Spill", "release", "release_trace",
           "return_freed_memory"]

#: share of physical memory the held activations may take before they are spilled
DEFAULT_SHARE = 0.25
#: taps smaller than this stay in memory: a file and a mapping each would cost more than they save
_SMALL = 1 << 16
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def default_max_memory() -> int:
    """A quarter of the machine's physical memory (4 GB where that cannot be read)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * DEFAULT_SHARE)
    except (ValueError, OSError, AttributeError):
        return 4 * 10**9


def parse_max_memory(value: Any) -> int:
    """``max_memory`` as bytes: an int, or a string such as ``"2GB"``, ``"512 MiB"``, ``"1e9"``;
    ``None`` gives :func:`default_max_memory`."""
    if value is None:
        return default_max_memory()
    if isinstance(value, bool):
        raise InputError(f"max_memory must be a number of bytes or a size such as '2GB', got {value!r}.")
    if isinstance(value, (int, float)) and value >= 0:
        return int(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", value)
        if m and m.group(2).lower() in _UNITS:
            return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    raise InputError(
        f"max_memory must be a number of bytes or a size such as '2GB' or '512MiB', got {value!r}. "
        "Give the memory the captured activations may take before parity spills them to disk."
    )


def trace_nbytes(trace: Trace) -> int:
    """Bytes of the values a trace holds in memory (memory-mapped values not counted)."""
    return sum(
        int(t.value.nbytes) for t in trace.taps if t.value is not None and not isinstance(t.value, np.memmap)
    )


#: spill directories that exist now, removed by the SIGTERM handler
_LIVE: set[Path] = set()
_LIVE_LOCK = threading.Lock()
#: the SIGTERM handler there was before ours (ours is installed while a directory exists)
_PREVIOUS: Any = None
_INSTALLED = False


def _on_sigterm(signum: int, frame: Any) -> None:
    with _LIVE_LOCK:
        dirs = list(_LIVE)
        _LIVE.clear()
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)
    previous = _PREVIOUS
    _uninstall()
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:  # the default action: end the process as SIGTERM does
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


def _install() -> None:
    """Our SIGTERM handler, in front of the one there is (only the main thread can set one;
    elsewhere the directory relies on the main thread's, or on the ``with`` block)."""
    global _PREVIOUS, _INSTALLED
    if _INSTALLED or threading.current_thread() is not threading.main_thread():
        return
    try:
        previous = signal.getsignal(signal.SIGTERM)
        if previous == signal.SIG_IGN:
            return  # the process ignores SIGTERM: it goes on, and so does the directory
        signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):
        return
    _PREVIOUS, _INSTALLED = previous, True


def _uninstall() -> None:
    global _PREVIOUS, _INSTALLED
    if not _INSTALLED:
        return
    try:
        if signal.getsignal(signal.SIGTERM) is _on_sigterm:  # nobody put another in front since
            signal.signal(signal.SIGTERM, _PREVIOUS if _PREVIOUS is not None else signal.SIG_DFL)
    except (ValueError, OSError):  # not the main thread: leave ours, it finds nothing to remove
        return
    _PREVIOUS, _INSTALLED = None, False


class Spill:
    """A private temporary directory of spilled values, removed on :meth:`close` (or leaving a
    ``with`` block).  The maps stay readable after removal on POSIX systems: an unlinked
    file lives while it is mapped."""

    def __init__(self) -> None:
        self._dir: Path | None = None
        self.count = 0
        self.nbytes = 0

    def __enter__(self) -> "Spill":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            with _LIVE_LOCK:
                _LIVE.discard(self._dir)
                if not _LIVE and threading.current_thread() is threading.main_thread():
                    _uninstall()
            self._dir = None

    @property
    def directory(self) -> Path | None:
        """The spill directory, once a value was spilled."""
        return self._dir

    def _write(self, value: np.ndarray) -> np.ndarray:
        if self._dir is None:
            parent = tempfile.gettempdir()
            try:
                self._dir = Path(tempfile.mkdtemp(prefix="parity-spill-"))
            except OSError as exc:
                raise _spill_error(exc, f"creating a spill directory in {parent}", self) from exc
            with _LIVE_LOCK:
                _LIVE.add(self._dir)
                _install()
        path = self._dir / f"{self.count}.npy"
        self.count += 1
        try:
            np.save(path, value, allow_pickle=False)
        except OSError as exc:
            path.unlink(missing_ok=True)  # a partial file
            raise _spill_error(exc, f"writing captured values to the spill directory {self._dir}", self) from exc
        self.nbytes += int(value.nbytes)
        return np.load(path, mmap_mode="r", allow_pickle=False)

    @contextmanager
    def capturing(self, budget: int) -> Iterator[None]:
        """Values recorded in this block stay in memory while they fit in ``budget`` bytes; the
        rest go to disk as they are recorded (the model's own tensors are then freed as it runs)."""
        from .capture.base import sink

        with sink(_Budget(self, budget)):
            yield


def _spill_error(exc: OSError, doing: str, spill: Spill) -> SpillError:
    code = errno.errorcode.get(exc.errno or 0, "")
    why = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC or (exc.errno is None and "requested and" in str(exc)):
        why = "no space left on the device"  # numpy's short write says "N requested and M written"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        why = f"the directory is not writable ({why})"
    return SpillError(
        f"{doing} failed: {why}{f' [{code}]' if code else ''}, after "
        f"{spill.count - 1 if spill.count else 0} value(s) ({spill.nbytes / 1e6:,.1f} MB) were spilled. "
        "parity spills activations to disk past max_memory: free space there, point TMPDIR at a "
        "writable disk with room, or raise max_memory (parity.diff(..., max_memory='8GB'), "
        "--max-memory 8GB) so that fewer values are spilled."
    )


class _Budget:
    """The tap sink of :meth:`Spill.capturing`: keeps values until ``budget`` bytes are held."""

    def __init__(self, spill: Spill, budget: int) -> None:
        self.spill, self.budget, self.held = spill, budget, 0

    def take(self, value: np.ndarray) -> np.ndarray:
        size = int(getattr(value, "nbytes", 0))
        if isinstance(value, np.memmap) or size < _SMALL or self.held + size <= self.budget:
            self.held += size
            return value
        return self.spill._write(np.asarray(value))


def release(value: Any) -> None:
    """Drop the resident pages of a memory-mapped value (they are reread from the page cache on
    the next access); in-memory values are left alone."""
    base = value
    while isinstance(base, np.ndarray) and not isinstance(base, np.memmap) and base.base is not None:
        base = base.base
    raw = getattr(base, "_mmap", None)
    if raw is not None and hasattr(raw, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        try:
            raw.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):
            pass


def release_trace(trace: Trace) -> None:
    """:func:`release` for every value of a trace (after a step that read them all, e.g. alignment)."""
    for tap in trace.taps:
        if isinstance(tap.value, np.memmap):
            release(tap.value)


def return_freed_memory() -> None:
    """Hand memory freed by dropped activations back to the operating system.

    glibc keeps freed heap memory for reuse (after large blocks are freed it raises its
    mmap threshold, so later tensors come from the heap): without this, spilling a trace
    would free nothing the process's RSS shows.  Elsewhere, a no-op."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # musl and other C libraries have no malloc_trim
        return
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
