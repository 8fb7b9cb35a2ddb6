"""The `nvramfs` command: one module per subcommand, each with register() and main().

Exit codes (all commands):
  0    success
  1    error (the message says what; e.g. a corrupt image, a missing file)
  2    usage error (bad arguments or options)
  130  interrupted (SIGINT)

fsck has e2fsck's own table instead (summed): 0 clean, 1 errors corrected,
4 errors left uncorrected, 8 operational error, 16 usage error, 32 cancelled.
A command module overrides 2 and 130 with USAGE_EXIT and INTERRUPT_EXIT.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from nvramfs import __version__
from nvramfs.errors import NvramfsError

# Subcommand modules, in the order `--help` lists them. Each defines
# register(subparsers) -> argparse.ArgumentParser (with set_defaults(func=main))
# and main(args) -> int.
COMMANDS = [
    "mkfs",
    "fsck",
    "info",
    "mount",
    "umount",
    "stat",
    "log",
    "plot",
    "demo",
    "replay",
    "trace",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nvramfs",
        description="Serve an NVRAM image through a simulated Linux VM_MIXEDMAP fault layer.",
        epilog="Exit codes: 0 ok, 1 error, 2 usage, 130 interrupted; fsck: e2fsck's "
        "(0 clean, 1 corrected, 4 uncorrected, 8 operational, 16 usage, 32 cancelled).",
    )
    parser.add_argument("--version", action="version", version=f"nvramfs {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"nvramfs.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"nvramfs.cli.{name}":
                continue  # not built yet
            raise
        module.register(sub)
    return parser


def _setup_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(name)s: %(message)s",
    )


def _command_module(argv: list[str]) -> object | None:
    """The module of the subcommand `argv` names (for its own exit codes), if any."""
    name = next((a for a in argv if not a.startswith("-")), None)
    if name not in COMMANDS:
        return None
    try:
        return importlib.import_module(f"nvramfs.cli.{name}")
    except ImportError:
        return None


def run(argv: list[str] | None = None, prog: str = "nvramfs") -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    module = _command_module(argv)
    usage_exit = getattr(module, "USAGE_EXIT", 2)
    interrupt_exit = getattr(module, "INTERRUPT_EXIT", 130)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return usage_exit if exc.code == 2 else int(exc.code or 0)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    _setup_logging(getattr(args, "debug", False))
    try:
        return int(args.func(args) or 0)
    except NvramfsError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return usage_exit if exc.exit_code == 2 else exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return interrupt_exit
    except BrokenPipeError:
        # `nvramfs log ... | head`: the reader went away; not an error.
        sys.stderr.close()
        return 0


def main() -> int:
    return run(sys.argv[1:])


def mkfs_main() -> int:
    """`mkfs.nvramfs IMAGE ...`: the conventional alias of `nvramfs mkfs`."""
    return run(["mkfs", *sys.argv[1:]], prog="mkfs.nvramfs")


def fsck_main() -> int:
    """`fsck.nvramfs IMAGE ...`: the conventional alias of `nvramfs fsck`."""
    return run(["fsck", *sys.argv[1:]], prog="fsck.nvramfs")


def mount_helper_main() -> int:
    """`mount.fuse.nvramfs IMAGE DIR -o OPTS`, as mount(8) runs it for `-t fuse.nvramfs`."""
    return run(["mount", *sys.argv[1:]], prog="mount.fuse.nvramfs")
