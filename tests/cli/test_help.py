"""Help texts: aliases say their own name, `nvramfs help CMD`, descriptions wrapped;
`info` shows the uuid; `nvramfs IMAGE DIR -o OPTS` is mount."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from nvramfs.cli import COMMANDS, _fallback_mount, run

ROOT = Path(__file__).resolve().parents[2]


def alias(func: str, *args: str) -> subprocess.CompletedProcess:
    code = f"import sys; sys.argv[0] = 'x'; from nvramfs.cli import {func}; sys.exit({func}())"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT
    )


@pytest.mark.parametrize(
    "func, name",
    [
        ("fsck_main", "fsck.nvramfs"),
        ("mkfs_main", "mkfs.nvramfs"),
        ("mount_helper_main", "mount.fuse.nvramfs"),
    ],
)
def test_aliases_say_their_own_name(func: str, name: str) -> None:
    out = alias(func, "--help")
    assert out.returncode == 0 and out.stdout.startswith(f"usage: {name} ")
    out = alias(func)  # missing arguments: the usage error names the alias too
    usage = 16 if name.startswith("fsck") else 2  # fsck: e2fsck's usage code
    assert out.returncode == usage and f"{name}: error:" in out.stderr


def test_help_command(capsys) -> None:
    assert run(["help", "mkfs"]) == 0
    assert capsys.readouterr().out.startswith("usage: nvramfs mkfs ")
    assert run(["help"]) == 0
    assert "COMMAND" in capsys.readouterr().out
    assert run(["help", "nosuch"]) == 2
    assert "no command 'nosuch'" in capsys.readouterr().err


@pytest.mark.parametrize("cmd", COMMANDS)
def test_descriptions_are_wrapped(cmd: str, capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    assert run([cmd, "--help"]) == 0
    text = capsys.readouterr().out
    desc = text.split("\n\n")[1]  # the paragraph after the usage
    assert all(len(line) <= 80 for line in desc.splitlines()), desc


def test_fallback_form_is_mount(tmp_path: Path) -> None:
    img = tmp_path / "a.img"
    img.touch()
    assert _fallback_mount([str(img), "/mnt", "-o", "rw"])[0] == "mount"
    assert _fallback_mount(["./a.img", "/mnt"])[0] == "mount"
    assert _fallback_mount(["info", str(img)]) == ["info", str(img)]
    assert _fallback_mount(["mkfss", "x"]) == ["mkfss", "x"]  # a typo stays a usage error


def test_info_shows_the_uuid(tmp_path: Path, capsys) -> None:
    img = tmp_path / "a.img"
    assert run(["mkfs", str(img), "--size", "4M", "-q"]) == 0
    assert run(["info", str(img)]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("uuid:"))
    uuid.UUID(line.split()[1])
