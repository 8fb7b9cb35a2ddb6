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
import os
import sys
import textwrap

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
    "ctl",
    "log",
    "plot",
    "demo",
    "replay",
    "trace",
    "sweep",
]


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs wrapped to the terminal, paragraph by paragraph; lines
    that start with a space (tables, examples) are kept as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out: list[str] = []
        para: list[str] = []

        def flush() -> None:
            if para:
                out.extend(textwrap.wrap(" ".join(para), width, initial_indent=indent,
                                         subsequent_indent=indent))  # fmt: skip
                para.clear()

        for line in text.splitlines():
            if not line.strip():
                flush()
                out.append("")
            elif line[0].isspace():
                flush()
                out.append(indent + line)
            else:
                para.append(line.strip())
        flush()
        return "\n".join(out)


class _Subparsers:
    """What each command's register() is handed: add_parser with the project's
    formatter, and the alias's own name as prog when run as one (fsck.nvramfs)."""

    def __init__(self, sub: argparse._SubParsersAction, prog: str) -> None:
        self._sub = sub
        self._prog = prog

    def add_parser(self, name: str, **kw: object) -> argparse.ArgumentParser:
        kw["formatter_class"] = Formatter
        if self._prog != "nvramfs":
            kw["prog"] = self._prog
        return self._sub.add_parser(name, **kw)  # type: ignore[arg-type]


def build_parser(prog: str = "nvramfs") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nvramfs",
        description="Serve an NVRAM image through a simulated Linux VM_MIXEDMAP fault layer. "
        "`nvramfs help COMMAND` (or `nvramfs COMMAND --help`) tells more of each.",
        epilog="Exit codes: 0 ok, 1 error, 2 usage, 130 interrupted; fsck: e2fsck's "
        "(0 clean, 1 corrected, 4 uncorrected, 8 operational, 16 usage, 32 cancelled).",
        formatter_class=Formatter,
    )
    parser.add_argument("--version", action="version", version=f"nvramfs {__version__}")
    sub = _Subparsers(parser.add_subparsers(dest="command", metavar="COMMAND"), prog)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"nvramfs.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"nvramfs.cli.{name}":
                continue  # not built yet
            raise
        module.register(sub)
    hp = sub.add_parser("help", help="show the help of a command", description="help COMMAND")
    hp.add_argument("topic", metavar="COMMAND", nargs="?")
    return parser


def _fallback_mount(argv: list[str]) -> list[str]:
    """mount.fuse's form `nvramfs IMAGE DIR -o OPTS` (the first argument is a path, not
    a command name) is `nvramfs mount IMAGE DIR -o OPTS`."""
    if not argv or argv[0] in COMMANDS or argv[0] == "help" or argv[0].startswith("-"):
        return argv
    positional = [a for a in argv if not a.startswith("-")]
    if len(positional) >= 2 and ("/" in argv[0] or os.path.exists(argv[0])):
        return ["mount", *argv]
    return argv


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
    argv = _fallback_mount(list(sys.argv[1:] if argv is None else argv))
    module = _command_module(argv)
    usage_exit = getattr(module, "USAGE_EXIT", 2)
    interrupt_exit = getattr(module, "INTERRUPT_EXIT", 130)
    parser = build_parser(prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return usage_exit if exc.code == 2 else int(exc.code or 0)
    if args.command == "help":
        if args.topic is None:
            parser.print_help()
            return 0
        if args.topic not in COMMANDS:
            print(f"{prog}: help: no command {args.topic!r} (one of: {', '.join(COMMANDS)})",
                  file=sys.stderr)  # fmt: skip
            return 2
        return run([args.topic, "--help"])
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
