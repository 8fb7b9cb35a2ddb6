"""Traces: record every MemoryManager call of a mount, replay it exactly (docs/TRACE.md).

    from nvramfs.trace import replay
    result = replay("run.trace", {"policy": "clock", "dram_pages": 8192})
    result.counters, result.summary

Record (record.py), replay (replay.py) and the file format (format.py) are
apart; mm knows nothing of this package.
"""

from .format import OPS, VERSION, TraceError, read_header
from .record import Recorder
from .replay import ReplayResult, replay, replay_config

__all__ = [
    "OPS",
    "VERSION",
    "Recorder",
    "ReplayResult",
    "TraceError",
    "read_header",
    "replay",
    "replay_config",
]
