"""BUG(): a broken mm invariant, raised loudly where it is assumed.

The kernel stops the machine on `BUG_ON`; the simulation raises `MMBug`
naming the invariant and the state that broke it. It is never caught and
ignored inside mm: the filesystem turns read-only when it sees one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .machine import Machine


class MMBug(Exception):
    """A broken mm invariant; `invariant` names it, the message adds the state."""

    def __init__(self, invariant: str, detail: str = "") -> None:
        self.invariant = invariant
        self.detail = detail
        super().__init__(f"BUG: {invariant}" + (f": {detail}" if detail else ""))


def BUG_ON(cond: object, invariant: str, detail: str = "") -> None:  # noqa: N802 (kernel name)
    """Raise `MMBug(invariant)` when `cond` holds."""
    if cond:
        raise MMBug(invariant, detail)


def VM_BUG_ON_PAGE(cond: object, machine: Machine, pfn: int, invariant: str) -> None:  # noqa: N802
    """Raise `MMBug(invariant)` with a dump of the struct page of `pfn` when `cond` holds."""
    if cond:
        raise MMBug(invariant, machine.dump_page(pfn))


class VMFaultSignal(OSError):
    """An access the kernel answers with a signal, not a bug: SIGBUS (a page past the end of
    the file, VM_FAULT_SIGBUS) or SIGSEGV (outside the vma, or against its protection).
    `signal` names it; the message names the vma (the filesystem's own, or a process's) and
    the address. An OSError with errno EFAULT, as get_user_pages reports such an access."""

    def __init__(self, signal: str, where: str) -> None:
        import errno

        self.signal = signal
        super().__init__(errno.EFAULT, f"{signal}: {where}")
