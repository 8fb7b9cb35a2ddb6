"""The dispatcher: help, version, and usage errors exit as documented."""

import subprocess
import sys

from nvramfs import __version__
from nvramfs.cli import run


def nvramfs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nvramfs", *args], capture_output=True, text=True, timeout=60
    )


def test_help_lists_commands_and_exit_codes():
    out = nvramfs("--help")
    assert out.returncode == 0
    assert "Exit codes" in out.stdout


def test_version():
    out = nvramfs("--version")
    assert out.returncode == 0
    assert __version__ in out.stdout


def test_no_command_is_a_usage_error():
    out = nvramfs()
    assert out.returncode == 2
    assert "usage" in out.stderr


def test_unknown_command_is_a_usage_error():
    out = nvramfs("frobnicate")
    assert out.returncode == 2
    assert "invalid choice" in out.stderr
    assert "Traceback" not in out.stderr


def test_nvramfs_error_is_one_line(monkeypatch, capsys):
    from nvramfs.errors import NvramfsError

    def boom(args):
        raise NvramfsError("the image is on fire", exit_code=3)

    import nvramfs.cli as cli

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda *a: parser)
    sub = next(a for a in parser._actions if a.dest == "command")
    p = sub.add_parser("boom")
    p.set_defaults(func=boom)
    assert run(["boom"]) == 3
    err = capsys.readouterr().err
    assert err == "nvramfs: the image is on fire\n"
