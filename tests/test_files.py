"""Writing output files."""

from __future__ import annotations

from parity.files import write_text


def test_write_text_creates_parents_and_writes_utf8(tmp_path):
    path = write_text(tmp_path / "reports" / "deep" / "r.txt", "‖b−a‖ ✓\n")
    assert path == tmp_path / "reports" / "deep" / "r.txt"
    assert path.read_bytes() == "‖b−a‖ ✓\n".encode("utf-8")
    write_text(str(path), "again")  # a str path, an existing file: replaced
    assert path.read_text(encoding="utf-8") == "again"
