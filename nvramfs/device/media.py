"""Medium profiles: the figures of one NVRAM technology, as data.

A profile is a TOML file (the built-in ones live in `media/`); every figure
has its source in docs/COSTS.md. `load_medium` takes a built-in name or a
path (a value containing `/` or ending in `.toml`), as `-o medium=` does.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import MISSING, dataclass, fields
from importlib import resources
from typing import Any

from ..errors import UsageError

PAGE_SIZE = 4096
BUILTIN = ("dram", "nor", "pcm", "optane")
DEFAULT_MEDIUM = "nor"


@dataclass(frozen=True)
class Medium:
    """What one byte read, programmed or erased costs on one technology."""

    name: str
    description: str
    granularity: int  # bytes the medium reads or writes at once
    read_random_ns: float  # the first granule of a read
    read_seq_ns: float  # each further granule of the same read
    read_bandwidth_mbps: float  # floor: a read never beats size / bandwidth
    write_latency_ns: float  # one program of `program_buffer` bytes, to persistence
    write_bandwidth_mbps: float  # floor for programs, as for reads
    program_buffer: int  # bytes one program operation writes
    erase_sector: int  # bytes erased at once (and the unit wear is kept in)
    erase_ns: float  # one sector erase (0: the medium writes in place)
    in_place: bool  # False: a programmed block must be erased before a rewrite
    wear_levelled: bool  # True: the module spreads wear itself (rating in PBW)
    endurance_cycles: float = 0.0  # program/erase cycles per sector (0: not rated)
    endurance_pbw: float = 0.0  # petabytes written, the module's rating (0: not rated)

    @property
    def sector_pages(self) -> int:
        """4 KiB blocks per erase sector (the wear unit)."""
        return max(1, self.erase_sector // PAGE_SIZE)

    def read_ns(self, nbytes: int = PAGE_SIZE) -> float:
        """One read of `nbytes` (a page by default): latency, bounded below by bandwidth."""
        granules = max(1, math.ceil(nbytes / self.granularity))
        by_latency = self.read_random_ns + (granules - 1) * self.read_seq_ns
        by_bandwidth = nbytes / (self.read_bandwidth_mbps * 1e-3)  # MB/s = 1e-3 B/ns
        return max(by_latency, by_bandwidth)

    def program_ns(self, nbytes: int = PAGE_SIZE) -> float:
        """Programming `nbytes` into erased (or in-place) cells, buffer by buffer."""
        programs = max(1, math.ceil(nbytes / self.program_buffer))
        by_latency = programs * self.write_latency_ns
        by_bandwidth = nbytes / (self.write_bandwidth_mbps * 1e-3)
        return max(by_latency, by_bandwidth)


@dataclass(frozen=True)
class KernelCosts:
    """The host kernel's costs (tools/kcost.c), the same for every medium."""

    minor_fault_ns: float
    copy_4k_ns: float
    unmap_ns: float


def _read_toml(text: str, where: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{where}: not a medium profile: {exc}") from None


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise UsageError(f"{where}: unknown field {unknown[0]!r} (fields: {', '.join(known)})")
    missing = [n for n, f in known.items() if n not in data and f.default is MISSING]
    if missing:
        raise UsageError(f"{where}: missing field {missing[0]!r}")
    out: dict[str, Any] = {}
    for name, value in data.items():
        want = known[name].type
        if want in ("int", "float") and (
            isinstance(value, bool) or not isinstance(value, int | float)
        ):
            raise UsageError(f"{where}: {name} must be a number, not {value!r}")
        if want in ("int", "float") and (not math.isfinite(value) or value < 0):
            raise UsageError(f"{where}: {name} must be a finite number >= 0, not {value!r}")
        if want == "bool" and not isinstance(value, bool):
            raise UsageError(f"{where}: {name} must be true or false, not {value!r}")
        if want == "str" and not isinstance(value, str):
            raise UsageError(f"{where}: {name} must be a string, not {value!r}")
        out[name] = int(value) if want == "int" else float(value) if want == "float" else value
    return cls(**out)


def _check(m: Medium, where: str) -> Medium:
    for name in ("granularity", "program_buffer", "erase_sector"):
        if getattr(m, name) <= 0:
            raise UsageError(f"{where}: {name} must be > 0")
    for name in ("read_bandwidth_mbps", "write_bandwidth_mbps"):
        if getattr(m, name) <= 0:
            raise UsageError(f"{where}: {name} must be > 0")
    if not m.in_place and m.erase_ns <= 0:
        raise UsageError(f"{where}: a medium that cannot write in place needs erase_ns > 0")
    if m.erase_sector % PAGE_SIZE:
        raise UsageError(f"{where}: erase_sector must be a multiple of {PAGE_SIZE}")
    return m


def load_medium(spec: str = DEFAULT_MEDIUM) -> Medium:
    """A built-in medium by name, or a profile file (`/` in it or `.toml` at its end)."""
    if "/" in spec or spec.endswith(".toml"):
        try:
            with open(spec, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise UsageError(
                f"medium {spec}: cannot read it ({why}); built-in media: {', '.join(BUILTIN)}"
            ) from None
        return _check(_build(Medium, _read_toml(text, spec), spec), spec)
    if spec not in BUILTIN:
        raise UsageError(f"unknown medium {spec!r}; built-in media: {', '.join(BUILTIN)}")
    text = resources.files(__package__).joinpath("media", f"{spec}.toml").read_text("utf-8")
    return _check(_build(Medium, _read_toml(text, spec), spec), spec)


def kernel_costs() -> KernelCosts:
    """The host kernel's measured costs (media/kernel.toml)."""
    text = resources.files(__package__).joinpath("media", "kernel.toml").read_text("utf-8")
    return _build(KernelCosts, _read_toml(text, "kernel.toml"), "kernel.toml")
