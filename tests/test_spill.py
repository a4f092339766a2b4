"""Spill directories: removed on SIGTERM as on an error or Ctrl-C; a full or read-only disk is a
SpillError naming the directory."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

from parity.errors import ParityError, SpillError
from parity.spill import Spill

BIG = np.ones(1 << 15, np.float32)  # 128 KiB: past the size under which values stay in memory


def _private_tmp(monkeypatch, path: Path) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(path))


def test_a_full_disk_while_spilling_is_a_spill_error_naming_the_directory_and_leaves_nothing(tmp_path, monkeypatch):
    _private_tmp(monkeypatch, tmp_path)
    written = []

    def short_write(path, value, allow_pickle=False):
        Path(path).write_bytes(b"\x93NUMPY partial")  # what a full disk leaves behind
        written.append(Path(path))
        raise OSError(errno.ENOSPC, "No space left on device")

    spill = Spill()
    with spill.capturing(0):
        from parity.capture.base import append_tap

        taps: list = []
        append_tap(taps, "kept", "Conv2d", BIG, None)  # the first spilled value goes through
        monkeypatch.setattr(np, "save", short_write)
        with pytest.raises(SpillError) as err:
            append_tap(taps, "lost", "Conv2d", BIG, None)
    directory = spill.directory
    assert isinstance(err.value, ParityError) and isinstance(err.value, OSError)
    assert str(err.value) == (
        f"writing captured values to the spill directory {directory} failed: no space left on the device "
        "[ENOSPC], after 1 value(s) (0.1 MB) were spilled. parity spills activations to disk past max_memory: "
        "free space there, point TMPDIR at a writable disk with room, or raise max_memory "
        "(parity.diff(..., max_memory='8GB'), --max-memory 8GB) so that fewer values are spilled."
    )
    assert not written[0].exists()  # the partial file is gone at once
    spill.close()
    assert not directory.exists() and list(tmp_path.iterdir()) == []


def test_a_read_only_temporary_directory_is_a_spill_error_naming_it(tmp_path, monkeypatch):
    _private_tmp(monkeypatch, tmp_path)

    def read_only(*args, **kwargs):  # as root, chmod would not stop the write: the OS's answer, simulated
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "parity-spill-x"))

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    with pytest.raises(SpillError, match=rf"^creating a spill directory in {tmp_path} failed: "
                                         r"the directory is not writable \(Read-only file system\) \[EROFS\]"):
        Spill()._write(BIG)


def test_a_full_disk_during_a_diff_is_said_as_such_not_as_the_model_failing(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    import parity

    _private_tmp(monkeypatch, tmp_path)
    monkeypatch.setattr(np, "save", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 4)).eval()
    with pytest.raises(SpillError, match=r"^writing captured values to the spill directory .*parity-spill-\w+ "
                                         r"failed: no space left on the device \[ENOSPC\]"):
        parity.diff(model, model, np.ones((64, 64), np.float32), max_memory=0)
    assert list(tmp_path.iterdir()) == []  # the spill directory went with the error


_CHILD = textwrap.dedent(
    """
    import signal, sys, time
    import numpy as np
    from parity.spill import Spill
    if sys.argv[1] == "handler":
        signal.signal(signal.SIGTERM, lambda s, f: (print("own handler", flush=True), sys.exit(7)))
    spill = Spill()
    spill._write(np.ones(1 << 15, np.float32))
    print(spill.directory, flush=True)
    time.sleep(60)
    """
)


@pytest.mark.parametrize("previous", ["default", "handler"])
def test_sigterm_removes_the_spill_directory_and_then_does_what_sigterm_did_before(tmp_path, previous):
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, previous], stdout=subprocess.PIPE, text=True, env=env)
    try:
        directory = Path(child.stdout.readline().strip())
        assert directory.parent == tmp_path and directory.is_dir() and any(directory.iterdir())
        child.send_signal(signal.SIGTERM)
        rest = child.communicate(timeout=30)[0]
    finally:
        if child.poll() is None:
            child.kill()
    assert not directory.exists()
    if previous == "default":
        assert child.returncode == -signal.SIGTERM  # ended by the signal, as without parity
    else:
        assert child.returncode == 7 and rest == "own handler\n"
