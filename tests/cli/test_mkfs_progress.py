"""mkfs progress when stderr is not a tty: a line every NOTTY_INTERVAL seconds with
the share done, the bytes, rich's rate and time left."""

from __future__ import annotations

import os
import re
from pathlib import Path

from nvramfs.cli import mkfs as mkfs_cli
from nvramfs.cli import run
from nvramfs.units import format_bytes

LINE = re.compile(r"^mkfs: (\d+)% (\S+ \S+) of (\S+ \S+), (\S+ \S+/s|\? /s), (\d+|\?) s left$")


def test_progress_lines_when_not_a_tty(tmp_path: Path, capsys, monkeypatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(8):
        (src / f"f{i}").write_bytes(os.urandom(1 << 20))
    monkeypatch.setattr(mkfs_cli, "NOTTY_INTERVAL", 0.0)
    monkeypatch.setattr(mkfs_cli, "SHOW_AFTER", 0.0)
    assert run(["mkfs", str(tmp_path / "a.img"), "--from", str(src)]) == 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("mkfs: ")]
    assert len(lines) >= 2, err
    parsed = [LINE.match(ln) for ln in lines]
    assert all(parsed), lines
    shares = [int(m.group(1)) for m in parsed]
    assert shares == sorted(shares) and shares[-1] == 100
    assert {m.group(3) for m in parsed} == {format_bytes(8 << 20)}
    assert any(m.group(4) != "? /s" for m in parsed)  # a rate once rich has samples


def test_no_progress_for_a_quick_mkfs(tmp_path: Path, capsys) -> None:
    assert run(["mkfs", str(tmp_path / "b.img"), "--size", "8M"]) == 0
    assert "mkfs: " not in capsys.readouterr().err
