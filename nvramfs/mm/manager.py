"""MemoryManager: the filesystem's data path through the simulated VM.

Each inode has one shared VM_MIXEDMAP vma owned by the filesystem (FUSE
never tells the daemon about its clients' mmaps, so one vma per inode is
the honest model). A FUSE read is a sequence of loads through it, a FUSE
write a sequence of stores: a present pte is a hit (the pte's young bit and
the page's access counter are set, nothing else), anything else goes
through handle_mm_fault with the kernel's rules (memory.py, filemap.py).

Fast paths: a one-page request is plain Python on array.array ptes (a few
lookups, no numpy, no allocation besides the returned memoryview); a
multi-page request gathers its ptes with numpy and returns one zero-copy
view of the NVRAM when the pages are one contiguous XIP run.

Once a second `tick()` runs the policy (promotions, demotions), writes back
dirty pages older than the writeback interval, logs the interval's access
histogram per inode and a counters snapshot, and flushes the event log.

Writeback is always in batches (mm/vmscan.c, mm/page-writeback.c): direct
reclaim isolates up to SWAP_CLUSTER_MAX victims, clean ones first, and writes
the dirty ones back together (`shrink_page_list`); the flusher's
`writeback_batch` writes up to MAX_WRITEBACK_PAGES of the oldest dirty pages;
`balance_dirty_pages` says, after each write, whether dirty pages passed
`dirty_background` (wake the flusher) or `dirty_limit` (the writer waits).
Those three are plain functions of the mm state, so a replay of the same
sequence of calls makes the same batches and throttles. Every batch reaches
the backing as one `write_pages` per file, which advances the file's size on
the device in the same transaction (ordered data, filemap.write_cache_pages).
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..events import schema
from ..events.writer import NullEventWriter
from .backing import Backing
from .bug import BUG_ON, MMBug, VMFaultSignal
from .demand import demand_read, demand_write, pin_pages, reclaim_one
from .filemap import (
    AddressSpace,
    cancel_dirty_page,
    delete_from_page_cache,
    dirty_indices,
    emit_page_events,
    groups_of,
    mapping_bmap,
    write_cache_pages,
    xip_file_vm_ops,
    xip_map_pages,
)
from .flags import (
    _PAGE_ACCESSED,
    _PAGE_BMAP,
    _PAGE_DIRTY,
    _PAGE_PRESENT,
    _PAGE_RW,
    FAULT_FLAG_WRITE,
    PAGE_SHIFT,
    PAGE_SIZE,
    PTE_PFN_SHIFT,
    VM_FAULT_ERROR,
    VM_FAULT_OOM,
    VM_FAULT_SIGBUS,
    VM_FAULT_SIGSEGV,
    VM_MAYREAD,
    VM_MAYSHARE,
    VM_MAYWRITE,
    VM_MIXEDMAP,
    VM_READ,
    VM_SHARED,
    VM_WRITE,
)
from .machine import (
    KERNEL_MODERN,
    PG_ANON,
    PG_DIRTY,
    PG_LOCKED,
    PG_LRU,
    PG_RESERVED,
    PG_UPTODATE,
    PG_WRITEBACK,
    Machine,
)
from .memory import handle_mm_fault, unmap_mapping_pages
from .migrate import (
    demote,
    demote_clean_chunk,
    demote_clean_pages,
    promote,
    reclaimable_frames,
)
from .policy import Policy, make_policy
from .stats import Stats, fault_kind
from .vma import PTE_INDEX_MASK, PTE_SHIFT, PTRS_PER_PTE, VMA, Chunk, MMStruct

# The filesystem's vma of a file covers every page a file can have.
MAX_FILE_PAGES = 1 << 51
_FS_VM_FLAGS = VM_READ | VM_WRITE | VM_SHARED | VM_MAYREAD | VM_MAYWRITE | VM_MAYSHARE | VM_MIXEDMAP
_NOT_YOUNG = ~_PAGE_ACCESSED
_PAGE_YOUNG = _PAGE_PRESENT | _PAGE_ACCESSED
_SAT = 0xFFFF
# What _end_interval hands the policy's scan: the touched page-table chunks, the
# inode each maps, whether each is still in its page table, the pages' hits.
Interval = tuple[list[Any], np.ndarray, np.ndarray, np.ndarray]

# Batch sizes, with the kernel's names: the victims one reclaim pass isolates
# (SWAP_CLUSTER_MAX), and the most pages one flusher batch writes back
# (MAX_WRITEBACK_PAGES, 4 MiB).
SWAP_CLUSTER_MAX = 32
MAX_WRITEBACK_PAGES = 1024
# The dirty thresholds' defaults, as fractions of the DRAM budget
# (vm.dirty_background_ratio, vm.dirty_ratio).
DIRTY_BACKGROUND_RATIO = 0.10
DIRTY_RATIO = 0.20
# balance_dirty_pages' answers.
BDP_OK = 0  # under dirty_background: nothing to do
BDP_BACKGROUND = 1  # over dirty_background: wake the flusher
BDP_THROTTLE = 2  # at dirty_limit: the writer waits while the flusher writes back


def _by_owner(owners: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """_groups of the owning inodes of a batch of frames (empty for an empty batch)."""
    return groups_of(owners) if len(owners) else []


def _vma_name(vma: VMA, addr: int) -> str:
    """The vma of a failed access, for an error message: the filesystem's own, or a process's."""
    ino = vma.vm_file.host if vma.vm_file is not None else 0
    index = vma.linear_page_index(addr)
    if vma.fs_owned:
        return f"the filesystem's own vma of ino {ino}, page {index}"
    return (
        f"process vma {vma.vm_mm.name or '?'} [{vma.vm_start:#x}, {vma.vm_end:#x}) of ino {ino}, "
        f"address {addr:#x} (page {index})"
    )


class MemoryManager:
    """The simulated VM behind every FUSE read and write (docs/ARCHITECTURE.md)."""

    def __init__(
        self,
        backing: Backing,
        dram_pages: int,
        policy: str | Policy = "2q",
        events: Any = None,
        pte_special: bool | None = None,
        nr_nvram_pages: int | None = None,
        *,
        kernel: str = KERNEL_MODERN,
        writeback_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        max_promote_per_tick: int | None = None,
        dirty_background_ratio: float = DIRTY_BACKGROUND_RATIO,
        dirty_ratio: float = DIRTY_RATIO,
        device: Any = None,
    ) -> None:
        if not 0 < dirty_background_ratio < dirty_ratio <= 1:
            raise ValueError(
                f"dirty thresholds: need 0 < dirty_background ({dirty_background_ratio:g}) "
                f"< dirty_limit ({dirty_ratio:g}) <= 1"
            )
        self.backing = backing
        # The device model (nvramfs.device.Meter or None): told what moved each
        # time the counters are read; it prices, it never decides.
        self.device = device
        m = self.machine = Machine(dram_pages, pte_special=pte_special, kernel=kernel)
        self.events = events if events is not None else NullEventWriter()
        m.events = self.events
        m.clock = clock
        m.nvram_view = backing.block_view
        m.reclaim = self._reclaim
        self.nr_nvram_pages = nr_nvram_pages or getattr(backing, "nr_blocks", None)
        m.nr_nvram_pages = self.nr_nvram_pages
        self.writeback_seconds = writeback_seconds
        # The dirty thresholds in frames: the flusher starts past the first, writers
        # wait at the second (global_dirty_limits).
        self.dirty_background_thresh = max(1, int(dram_pages * dirty_background_ratio))
        self.dirty_thresh = max(self.dirty_background_thresh + 1, int(dram_pages * dirty_ratio))
        # balance_dirty_pages_ratelimited: the dirty count is looked at once this
        # many pages were written since the last look, a small part of the gap
        # between the thresholds.
        self.ratelimit_pages = max(
            1, min(SWAP_CLUSTER_MAX, (self.dirty_thresh - self.dirty_background_thresh) // 8)
        )
        self._written_since_check = 0
        self.clock = clock
        self.trace_faults = bool(getattr(self.events, "trace_faults", False))
        # Bounded so that one tick (which blocks every request) stays short.
        self.max_promote_per_tick = max_promote_per_tick or max(32, min(1024, dram_pages // 8))
        self.stats_ = m.stats
        self.policy: Policy = (
            make_policy(policy, m.nr_frames) if isinstance(policy, str) else policy
        )
        # A per-access policy (lru, opt, opt-nox) takes every read and write (demand.py).
        self._demand = self.policy.per_access
        # Reclaim's ranked victims (the inactive list) for the tick policies: the
        # policy's order of the page-cache frames, taken once and consumed
        # SWAP_CLUSTER_MAX at a time until the next tick, instead of ranking every
        # frame on every pass. Entries are (frame, its allocation number then): a
        # frame freed and reused since is skipped.
        self._inactive: tuple[np.ndarray, np.ndarray] | None = None
        self._inactive_pos = 0
        self._alloc_hook_install()
        # Multi-page stores that fault alike go through _store_fault_batch (off: page
        # by page, as the tests that compare the two do).
        self.store_batching = True
        self._spaces: dict[int, AddressSpace] = {}
        self._vmas: dict[int, VMA] = {}
        self._tick = 0
        self._gen = 0
        self._touched: list[Any] = []
        self._t_interval = clock()
        self._closed = False
        self._offline: list[int] = []  # frames taken out of the budget (set_dram_budget)
        # Hot-path constants.
        self._nr_frames = m.nr_frames
        self._base = m.nvram_base_pfn
        self._data_view = m.data_view
        self._data_rw = m.data_rw
        self._block_view = backing.block_view
        self._arange = np.arange(1 << 16, dtype=np.int64)

    @property
    def pte_special(self) -> bool:
        """Which vm_normal_page rule set the machine uses (True: x86 today; False: 2008)."""
        return self.machine.pte_special

    @property
    def kernel(self) -> str:
        """The kernel whose rules the machine runs: `2.6.26-rc1`, `2.6.26` or `modern`."""
        return self.machine.kernel

    @property
    def dram_pages(self) -> int:
        """The DRAM budget in frames."""
        return self.machine.dram_pages

    # -- setup ----------------------------------------------------------------

    def _alloc_hook_install(self) -> None:
        m = self.machine
        alloc = m.alloc_page

        lru_seq = self._lru_seq = np.zeros(m.nr_frames, dtype=np.int64)
        self._seq = 0

        def alloc_page() -> int | None:
            page = alloc()
            if page is not None:
                self.policy.on_alloc(page)
                self._seq += 1
                lru_seq[page] = self._seq
            return page

        m.alloc_page = alloc_page  # type: ignore[method-assign]
        alloc_many = m.alloc_pages

        def alloc_pages(n: int) -> np.ndarray | None:
            frames = alloc_many(n)
            done = frames if frames is not None else m.partial
            if len(done):
                self.policy.on_alloc(done)
                lru_seq[done] = np.arange(self._seq + 1, self._seq + 1 + len(done))
                self._seq += len(done)
            return frames

        m.alloc_pages = alloc_pages  # type: ignore[method-assign]

    def address_space(self, ino: int) -> AddressSpace:
        """The address_space of `ino`, with its filesystem vma (created on first use)."""
        mapping = self._spaces.get(ino)
        if mapping is None:
            if ino <= 0:
                raise ValueError(f"inode number {ino} is not valid")
            mapping = self._spaces[ino] = AddressSpace(ino, self.machine, self.backing)
            mapping.i_generation = self._generation(ino)
            i_size = getattr(self.backing, "i_size", None)
            if i_size is not None:
                mapping.i_size = i_size(ino)
            mm = MMStruct(self.machine, f"fs:{ino}")
            vma = VMA(
                vm_mm=mm,
                vm_start=0,
                vm_end=MAX_FILE_PAGES << PAGE_SHIFT,
                vm_pgoff=0,
                vm_flags=_FS_VM_FLAGS,
                vm_ops=xip_file_vm_ops,
                vm_file=mapping,
                fs_owned=True,
            )
            mm.vmas.append(vma)
            mapping.i_mmap.append(vma)
            mapping.fs_vma = vma
            self._vmas[ino] = vma
            pins = self.policy.pages_to_pin(ino)
            if pins:
                pin_pages(self, mapping, pins)
        return mapping

    def _generation(self, ino: int) -> int:
        """The inode's generation, if the backing keeps one (the image does), else 0."""
        get = getattr(self.backing, "inode_generation", None)
        if get is None:
            return 0
        try:
            return int(get(ino))
        except Exception:  # a test backing, or an inode the backing no longer has
            return 0

    def mmap(
        self, ino: int, pgoff: int, npages: int, flags: int, mm: MMStruct | None = None
    ) -> VMA:
        """Map `npages` pages of `ino` from `pgoff` into a (new) process mm: a simulated
        process's vma (tests, trace replays). `flags` are vm_flags; VM_MIXEDMAP is added."""
        mapping = self.address_space(ino)
        if mm is None:
            mm = MMStruct(self.machine, f"proc:{ino}")
        start = (max((v.vm_end for v in mm.vmas), default=0) + (1 << 30)) & ~((1 << 30) - 1)
        vma = VMA(
            vm_mm=mm,
            vm_start=start,
            vm_end=start + (npages << PAGE_SHIFT),
            vm_pgoff=pgoff,
            vm_flags=flags | VM_MIXEDMAP,
            vm_ops=xip_file_vm_ops,
            vm_file=mapping,
        )
        mm.vmas.append(vma)
        mapping.i_mmap.append(vma)
        return vma

    def munmap(self, vma: VMA) -> None:
        """Tear down every pte of a process vma and forget it."""
        from .memory import zap_vma_range

        zap_vma_range(vma, vma.vm_start >> PAGE_SHIFT, (vma.vm_end >> PAGE_SHIFT) - 1, True)
        if vma.vm_file is not None:
            vma.vm_file.i_mmap.remove(vma)
        vma.vm_mm.vmas.remove(vma)

    def access(self, vma: VMA, addr: int, write: bool) -> int:
        """One load or store at `addr` of any vma: fault until the pte allows it; returns the pfn.
        An access the kernel would answer with a signal raises VMFaultSignal."""
        return self._fault(vma, addr, write)

    def set_size(self, ino: int, size: int) -> None:
        """i_size_write: tell mm the file's size, which mapped accesses fault against (a page
        wholly past it is SIGBUS). For sizes mm learns from elsewhere (a file opened or
        created); `write` extends the size itself and `truncate` sets it, so a shrink goes
        through `truncate` (which drops the pages past the new end)."""
        if size < 0:
            raise ValueError("negative size")
        self.address_space(ino).i_size = size

    def i_size(self, ino: int) -> int | None:
        """The size mm knows for `ino` (None: never told)."""
        mapping = self._spaces.get(ino)
        return None if mapping is None else mapping.i_size

    # -- faults -----------------------------------------------------------------

    def _fault(self, vma: VMA, addr: int, write: bool, kinds: int = 0) -> int:
        """handle_mm_fault until the pte at `addr` allows the access; count the access's fault
        kind (`kinds`: what the caller did first, e.g. a readpage); return the pfn mapped."""
        m = self.machine
        m.fault_kinds = kinds
        flags = FAULT_FLAG_WRITE if write else 0
        mm = vma.vm_mm
        for _ in range(8):
            pte = mm.pte_at(addr)
            if pte & _PAGE_PRESENT and (not write or pte & _PAGE_RW):
                break
            ret = handle_mm_fault(vma, addr, flags)
            if ret & VM_FAULT_ERROR:
                if ret & VM_FAULT_OOM:
                    raise OSError(errno.ENOMEM, "mm: DRAM budget exhausted, nothing reclaimable")
                where = f"{'store to' if write else 'load from'} {_vma_name(vma, addr)}"
                if ret & VM_FAULT_SIGBUS:
                    raise VMFaultSignal("SIGBUS", where)
                if ret & VM_FAULT_SIGSEGV:
                    raise VMFaultSignal("SIGSEGV", where)
                raise MMBug(f"fault failed: {where}", f"vm_fault_t {ret:#x}")
        else:
            raise MMBug("fault did not converge", f"addr {addr:#x} write {write}")
        chunk, slot = mm.get_locked_pte(addr)
        chunk.pte[slot] = pte | _PAGE_ACCESSED | (_PAGE_DIRTY if write else 0)
        kind = fault_kind(m.fault_kinds)
        if kind is not None:
            m.stats.count_fault(kind)
            if self.trace_faults and vma.fs_owned:
                self.events.emit(
                    schema.FAULT,
                    ino=vma.vm_file.host if vma.vm_file else 0,
                    index=vma.linear_page_index(addr),
                    kind=kind,
                    write=write,
                )
        return pte >> PTE_PFN_SHIFT

    # -- read ---------------------------------------------------------------------

    def read(self, ino: int, offset: int, length: int) -> memoryview | bytes:
        """Loads of [offset, offset+length) through the inode's vma (the caller clamps to EOF).

        One memoryview when the range is one contiguous XIP run (a slice of the
        backing's mmap) or lies in one frame; else bytes."""
        if length <= 0:
            return b""
        if self._demand:
            return demand_read(self, ino, offset, length)
        index = offset >> PAGE_SHIFT
        off = offset & 4095
        if off + length > PAGE_SIZE:
            return self._read_batch(ino, offset, length)
        vma = self._vmas.get(ino)
        if vma is not None:
            chunk = vma.vm_mm.pgd.get(index >> PTE_SHIFT)
            if chunk is not None:
                slot = index & 511
                pte = chunk.pte[slot]
                if pte & 1:  # _PAGE_PRESENT
                    if not pte & 32:  # _PAGE_ACCESSED
                        chunk.pte[slot] = pte | 32
                    r = chunk.reads[slot]
                    if r != _SAT:
                        chunk.reads[slot] = r + 1
                    if chunk.gen != self._gen:
                        chunk.gen = self._gen
                        self._touched.append(chunk)
                    st = self.stats_
                    st.reads += 1
                    pfn = pte >> 12
                    if pfn < self._nr_frames:
                        if pfn:
                            st.pagecache_hit += 1
                        start = (pfn << 12) + off
                        return self._data_view[start : start + length]
                    return self._block_view(pfn - self._base)[off : off + length]
        return self._read_slow(ino, index, off, length)

    def _count(self, chunk: Any, slot: int, write: bool) -> None:
        if write:
            w = chunk.writes[slot]
            if w != _SAT:
                chunk.writes[slot] = w + 1
        else:
            r = chunk.reads[slot]
            if r != _SAT:
                chunk.reads[slot] = r + 1
        if chunk.gen != self._gen:
            chunk.gen = self._gen
            self._touched.append(chunk)

    def _read_slow(self, ino: int, index: int, off: int, length: int) -> memoryview:
        self.address_space(ino)
        vma = self._vmas[ino]
        pfn = self._fault(vma, index << PAGE_SHIFT, False)
        chunk, slot = vma.vm_mm.get_locked_pte(index << PAGE_SHIFT)
        self._count(chunk, slot, False)
        self.stats_.reads += 1
        if pfn < self._nr_frames:
            start = (pfn << 12) + off
            return self._data_view[start : start + length]
        return self._block_view(pfn - self._base)[off : off + length]

    def _prefill_bmap(self, vma: VMA, first: int, n: int) -> None:
        """One bmap call for a range's pages that have neither a pte nor a hint."""
        mm = vma.vm_mm
        pos, last = first, first + n - 1
        need = []
        while pos <= last:
            chunk, s = mm.get_locked_pte(pos << PAGE_SHIFT)
            e = min(PTRS_PER_PTE, s + last - pos + 1)
            if np.count_nonzero(chunk.pte_np[s:e]) != e - s:
                need.append((chunk, s, e, pos))
            pos += e - s
        if not need:
            return
        blocks = np.asarray(self.backing.bmap(vma.vm_file.host, first, n), dtype=np.int64)
        if self.nr_nvram_pages is not None and len(blocks):
            BUG_ON(
                int(blocks.max()) >= self.nr_nvram_pages or int(blocks.min()) < 0,
                "bmap returned a block outside the NVRAM device",
                f"ino {vma.vm_file.host} pages {first}+{n}",
            )
        pfns = np.where(blocks > 0, blocks + self._base, 0)
        hints = (pfns << PTE_PFN_SHIFT) | _PAGE_BMAP
        for chunk, s, e, pos in need:
            p = chunk.pte_np[s:e]
            h = hints[pos - first : pos - first + (e - s)]
            p[:] = np.where(p == 0, h, p)

    def _read_batch(self, ino: int, offset: int, length: int) -> memoryview | bytes:
        """Loads of a multi-page range: vectorised per page-table chunk."""
        vma = self._vmas.get(ino)
        if vma is None:
            self.address_space(ino)
            vma = self._vmas[ino]
        first = offset >> PAGE_SHIFT
        last = (offset + length - 1) >> PAGE_SHIFT
        n = last - first + 1
        off = offset & 4095
        pgd = vma.vm_mm.pgd
        no = first >> PTE_SHIFT
        faulted = 0
        if no == last >> PTE_SHIFT and (chunk := pgd.get(no)) is not None:
            s = first & 511
            p = chunk.pte_np[s : s + n]
            was = None
            if not int(np.bitwise_and.reduce(p)) & _PAGE_PRESENT:
                was = (p & _PAGE_PRESENT) != 0
                faulted = self._fault_range(vma, first, n)
            p |= _PAGE_ACCESSED
            r = chunk.reads_np[s : s + n]
            np.minimum(r, _SAT - 1, out=r)
            r += 1
            if chunk.gen != self._gen:
                chunk.gen = self._gen
                self._touched.append(chunk)
            pfns = p >> PTE_PFN_SHIFT
        else:
            was = self._range_present(vma, first, n)
            if was is None or not was.all():
                if was is None:
                    was = np.zeros(n, dtype=bool)
                faulted = self._fault_range(vma, first, n)
            pfns = self._batch_slow(vma, first, n)
        st = self.stats_
        st.reads += n
        pfn0 = int(pfns[0])
        base = self._base
        if pfn0 >= base:
            d = pfns - (self._arange[:n] if n <= len(self._arange) else np.arange(n))
            if int(d.min()) == int(d.max()):
                # One contiguous XIP run: a single zero-copy view of the NVRAM.
                return self._block_view(pfn0 - base, n)[off : off + length]
        nr_frames = self._nr_frames
        frames = (pfns < nr_frames) & (pfns > 0)
        if faulted:
            # Pages that just faulted were counted by their fault.
            frames &= was if was is not None else False
        st.pagecache_hit += int(np.count_nonzero(frames))
        if int(pfns.max()) < nr_frames:
            # All frames (or the zero page): one gather.
            buf = self.machine.data[pfns].reshape(-1)
            return memoryview(buf).toreadonly()[off : off + length]
        out = []
        dv = self._data_view
        bv = self._block_view
        end = off + length
        for k, pfn in enumerate(pfns.tolist()):
            lo = off if k == 0 else 0
            hi = PAGE_SIZE if k < n - 1 else end - (n - 1) * PAGE_SIZE
            if pfn < nr_frames:
                out.append(dv[(pfn << 12) + lo : (pfn << 12) + hi])
            else:
                out.append(bv(pfn - base)[lo:hi])
        return b"".join(out)

    def _fault_range(self, vma: VMA, first: int, n: int) -> int:
        """Fault in every unmapped page of [first, first+n): the XIP ones in one go
        (xip_map_pages), the rest one by one. Returns how many faulted."""
        self._prefill_bmap(vma, first, n)
        mapped = xip_map_pages(vma, first, n)
        if mapped is not None and len(mapped):
            self.stats_.xip_read += len(mapped)
            if self.trace_faults:
                ino = vma.vm_file.host
                for index in mapped.tolist():
                    self.events.emit(
                        schema.FAULT, ino=ino, index=index, kind="xip_read", write=False
                    )
        nfault = 0 if mapped is None else len(mapped)
        mm = vma.vm_mm
        for index in range(first, first + n):
            if not mm.pte_at(index << PAGE_SHIFT) & _PAGE_PRESENT:
                self._fault(vma, index << PAGE_SHIFT, False)
                nfault += 1
        return nfault

    def _range_present(self, vma: VMA, first: int, n: int) -> np.ndarray | None:
        """Which pages of the range have a present pte (None: some chunk is missing)."""
        pgd = vma.vm_mm.pgd
        last = first + n - 1
        parts = []
        pos = first
        while pos <= last:
            chunk = pgd.get(pos >> PTE_SHIFT)
            if chunk is None:
                return None
            s = pos & 511
            e = min(PTRS_PER_PTE, s + last - pos + 1)
            parts.append((chunk.pte_np[s:e] & _PAGE_PRESENT) != 0)
            pos += e - s
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _batch_slow(self, vma: VMA, first: int, n: int) -> np.ndarray:
        """A range across page-table chunks, all mapped: account, gather the pfns."""
        mm = vma.vm_mm
        last = first + n - 1
        parts = []
        pos = first
        while pos <= last:
            chunk = mm.pgd[pos >> PTE_SHIFT]
            s = pos & 511
            e = min(PTRS_PER_PTE, s + last - pos + 1)
            p = chunk.pte_np[s:e]
            p |= _PAGE_ACCESSED
            r = chunk.reads_np[s:e]
            np.minimum(r, _SAT - 1, out=r)
            r += 1
            if chunk.gen != self._gen:
                chunk.gen = self._gen
                self._touched.append(chunk)
            parts.append(p >> PTE_PFN_SHIFT)
            pos += e - s
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    # -- write --------------------------------------------------------------------

    def write(self, ino: int, offset: int, data: Any) -> None:
        """Stores of `data` at `offset` through the inode's vma (COW of XIP pages, hole fills).

        A store of several pages none of which has a frame yet goes, a page-table
        chunk at a time, through `_store_fault_batch` (the same faults, batched);
        anything else page by page."""
        mv = memoryview(data)
        if mv.ndim != 1 or mv.itemsize != 1:
            mv = mv.cast("B")
        n = len(mv)
        if n == 0:
            return
        vma = self._vmas.get(ino)
        if vma is None:
            self.address_space(ino)
            vma = self._vmas[ino]
        # write(2) extends the file before its stores (so an append never faults
        # past the end of the file).
        mapping = vma.vm_file
        size = mapping.i_size
        if size is not None and offset + n > size:
            mapping.i_size = offset + n
        if offset + n > mapping.written_end:
            mapping.written_end = offset + n
        self._written_since_check += ((offset + n - 1) >> PAGE_SHIFT) - (offset >> PAGE_SHIFT) + 1
        if self._demand:
            demand_write(self, ino, offset, mv)
            return
        if n > PAGE_SIZE and self.store_batching and self.machine.modern:
            pos = 0
            while pos < n:
                at = offset + pos
                # Up to the end of the page-table chunk.
                k = min(n - pos, (((at >> PAGE_SHIFT) | 511) + 1 << PAGE_SHIFT) - at)
                part = mv[pos : pos + k]
                if not self._store_fault_batch(vma, at, part):
                    self._write_pages(vma, at, part)
                pos += k
        else:
            self._write_pages(vma, offset, mv)

    def _write_pages(self, vma: VMA, offset: int, mv: memoryview) -> None:
        """Stores page by page: a writable pte is a hit, anything else faults."""
        n = len(mv)
        mapping = vma.vm_file
        ino = mapping.host
        mm = vma.vm_mm
        st = self.stats_
        rw = self._data_rw
        pos = 0
        while pos < n:
            at = offset + pos
            index = at >> PAGE_SHIFT
            off = at & 4095
            k = min(PAGE_SIZE - off, n - pos)
            addr = index << PAGE_SHIFT
            chunk, slot = mm.get_locked_pte(addr)
            pte = chunk.pte[slot]
            if pte & _PAGE_PRESENT and pte & _PAGE_RW:
                if pte & (_PAGE_ACCESSED | _PAGE_DIRTY) != (_PAGE_ACCESSED | _PAGE_DIRTY):
                    chunk.pte[slot] = pte | _PAGE_ACCESSED | _PAGE_DIRTY
                st.write_reuse += 1
                pfn = pte >> PTE_PFN_SHIFT
            else:
                pfn = self._fault(vma, addr, True)
            if pfn >= self._base and not self.machine.modern:
                # kernel=2.6.26: the raw pfn was made writable in place.
                self._xip_store(mapping, index, pfn, off, mv[pos : pos + k])
            else:
                BUG_ON(
                    not 0 < pfn < self._nr_frames,
                    "store through a writable pte that maps no frame",
                    f"ino {ino} index {index} pfn {pfn:#x}",
                )
                start = (pfn << 12) + off
                rw[start : start + k] = mv[pos : pos + k]
            self._count(chunk, slot, True)
            st.writes += 1
            pos += k

    def _xip_store(self, mapping: AddressSpace, index: int, pfn: int, off: int, data: Any) -> None:
        """A store through a writable raw pfn (kernel=2.6.26): the bytes go straight into the
        NVRAM block (the backing rewrites the page, durable on return), as 2.6.26's
        __xip_file_write copied write(2) into XIP memory. A device that puts the page
        elsewhere (log-structured) gets the file's ptes of the old pfn torn down."""
        block = pfn - self._base
        page = bytearray(self._block_view(block))
        page[off : off + len(data)] = data
        idx = np.array([index], dtype=np.int64)
        new = int(np.asarray(self.backing.write_pages(mapping.host, idx, [page]))[0])
        BUG_ON(new <= 0, "write_pages returned no block", f"ino {mapping.host} index {index}")
        if new != block:
            unmap_mapping_pages(mapping, index, 1, False)
            vma = mapping.fs_vma
            if vma is not None:
                chunk, slot = vma.vm_mm.get_locked_pte(vma.page_address(index))
                chunk.pte[slot] = ((self._base + new) << PTE_PFN_SHIFT) | _PAGE_BMAP
        self.stats_.xip_writes += 1
        self.events.emit(
            schema.XIP_WRITE,
            ino=mapping.host,
            index=index,
            pfn_from=pfn,
            pfn_to=self._base + new,
            offset=off,
            length=len(data),
            reason=schema.REASON_WRITE,
            via=schema.VIA_XIP_FILE_WRITE,
        )

    def _store_fault_batch(self, vma: VMA, offset: int, mv: memoryview) -> bool:
        """Stores into pages of one page-table chunk of the filesystem's vma that all
        fault the same way: no page-cache page, the pte absent (a hole or an NVRAM
        block, its bmap hint) or a read-only XIP pfn; the vma the only one mapping
        the file. Leaves exactly the state the per-page faults leave (a hole:
        xip_file_fault fills a zeroed frame; a block: pfn_mkwrite copies it into a
        frame, a `cow` event; then do_shared_fault maps the frame writable and
        dirty, with the pte's reference), with one bmap, one pass over the ptes
        and one copy of the data; the frame of a page the store covers whole is not
        filled first (the store overwrites all of it). False (nothing done) when a
        page does not qualify: the caller stores page by page."""
        mapping = vma.vm_file
        if self.trace_faults or len(mapping.i_mmap) != 1:
            return False
        first = offset >> PAGE_SHIFT
        n = len(mv)
        npg = ((offset + n - 1) >> PAGE_SHIFT) - first + 1
        cache = mapping.pages
        if cache and not cache.keys().isdisjoint(range(first, first + npg)):
            return False
        mm = vma.vm_mm
        base = self._base
        chunk, s0 = mm.get_locked_pte(first << PAGE_SHIFT)
        p = chunk.pte_np[s0 : s0 + npg]
        npresent = int(np.count_nonzero(p & _PAGE_PRESENT))
        if npresent:
            present = (p & _PAGE_PRESENT) != 0
            if np.count_nonzero(present & (((p >> PTE_PFN_SHIFT) < base) | ((p & _PAGE_RW) != 0))):
                return False
        if np.count_nonzero(p) != npg:  # a pte with neither a pfn nor a bmap hint
            self._prefill_bmap(vma, first, npg)
        src = p >> PTE_PFN_SHIFT  # NVRAM pfn of each page, 0 for a hole
        nh = npg - int(np.count_nonzero(src))
        hole = src == 0 if nh else None
        m = self.machine
        frames = m.alloc_pages(npg)
        if frames is None:
            for f in m.partial.tolist():
                m.put_page(f)
            return False
        frames_l = frames.tolist()
        data = m.data
        off0 = offset & 4095
        tail = (off0 + n) & 4095
        buf = np.frombuffer(mv, dtype=np.uint8)
        # Partial pages first hold what the fault gives them (zeroes, or the block).
        for k in {0, npg - 1} if (off0 or tail) else ():
            if (k == 0 and off0) or (k == npg - 1 and tail):
                if not src[k]:  # a hole
                    data[frames_l[k]] = 0
                else:
                    data[frames_l[k]] = np.frombuffer(
                        self._block_view(int(src[k]) - base), dtype=np.uint8
                    )
        lo = 1 if off0 else 0
        hi = npg - 1 if tail else npg
        head = (PAGE_SIZE - off0) if off0 else 0
        if npg == 1:
            data[frames_l[0], off0 : off0 + n] = buf
        else:
            if off0:
                data[frames_l[0], off0:] = buf[:head]
            if hi > lo:
                data[frames[lo:hi]] = buf[head : head + (hi - lo) * PAGE_SIZE].reshape(
                    -1, PAGE_SIZE
                )
            if tail:
                data[frames_l[-1], :tail] = buf[n - tail :]
        # struct pages: in the page cache (its reference) and mapped (the pte's).
        ino = mapping.host
        idx = np.arange(first, first + npg, dtype=np.int64)
        m._refcount[frames] = 2
        m._mapcount[frames] = 0
        m.mapping[frames] = ino
        m.index[frames] = idx
        m.flags[frames] = PG_UPTODATE | PG_LRU | PG_DIRTY  # fresh frames: flags were 0
        m.nr_file_dirty += npg
        m.page_block[frames] = np.where(hole, 0, src - base) if nh else src - base
        m.dirtied_at[frames] = self.clock()
        cache.update(zip(range(first, first + npg), frames_l, strict=True))
        p[:] = (frames << PTE_PFN_SHIFT) | (_PAGE_PRESENT | _PAGE_ACCESSED | _PAGE_DIRTY | _PAGE_RW)
        mm.rss_file += npg
        st = self.stats_
        st.xip_mapped -= npresent
        st.hole += nh
        st.cow += npg - nh
        st.writes += npg
        w = chunk.writes_np[s0 : s0 + npg]
        np.minimum(w, _SAT - 1, out=w)
        w += 1
        if chunk.gen != self._gen:
            chunk.gen = self._gen
            self._touched.append(chunk)
        if nh:
            # Each hole fill is a zeroed frame (_new_cache_page's `zero` event).
            Stats.bump(st.zeroed, schema.REASON_WRITE, nh)
            emit = self.events.emit
            for k in np.flatnonzero(hole).tolist():
                emit(
                    schema.ZERO_EV,
                    ino=ino,
                    index=first + k,
                    home=schema.PAGECACHE,
                    pfn=frames_l[k],
                    offset=0,
                    length=PAGE_SIZE,
                    reason=schema.REASON_WRITE,
                )
        if nh < npg:
            Stats.bump(st.cow_via, schema.VIA_PFN_MKWRITE, npg - nh)
            if nh:
                cow = np.flatnonzero(~hole)
                idx, src, frames = idx[cow], src[cow], frames[cow]
            emit_page_events(
                m,
                schema.COW,
                ino,
                idx,
                src,
                frames,
                schema.XIP,
                schema.PAGECACHE,
                schema.REASON_WRITE,
                frames,
                via=schema.VIA_PFN_MKWRITE,
                # As pfn_mkwrite left each: the page cache's reference, not yet mapped.
                counts=(1, 0),
            )
        return True

    # -- truncate / evict -----------------------------------------------------

    def _xip_ptes(self, mapping: AddressSpace, first: int) -> int:
        """How many present raw NVRAM ptes map file pages >= first, in every vma of the file."""
        base = self._base
        n = 0
        for vma in mapping.i_mmap:
            vlast = vma.vm_pgoff + vma.nr_pages - 1
            lo = max(first, vma.vm_pgoff)
            if lo > vlast:
                continue
            v0 = (vma.vm_start >> PAGE_SHIFT) + lo - vma.vm_pgoff
            v1 = (vma.vm_start >> PAGE_SHIFT) + vlast - vma.vm_pgoff
            c0, c1 = v0 >> PTE_SHIFT, v1 >> PTE_SHIFT
            for no, chunk in vma.vm_mm.pgd.items():
                if not c0 <= no <= c1:
                    continue
                s = v0 - (no << PTE_SHIFT) if no == c0 else 0
                e = v1 - (no << PTE_SHIFT) + 1 if no == c1 else PTRS_PER_PTE
                p = chunk.pte_np[s:e]
                n += int(
                    np.count_nonzero(((p & _PAGE_PRESENT) != 0) & ((p >> PTE_PFN_SHIFT) >= base))
                )
        return n

    def _drop_pages(self, mapping: AddressSpace, first: int, reason: str) -> None:
        """Take page-cache pages >= first out of the cache, unwritten (truncate_inode_pages);
        tear down every pte of them, private COWs too; drop the vma's hints. Logs one `drop`
        event (which pages, how many dirty ones were discarded, how many XIP ptes went)."""
        m = self.machine
        xip = self._xip_ptes(mapping, first)
        unmap_mapping_pages(mapping, first, 0, True)
        indices = sorted(i for i in mapping.pages if i >= first)
        pfns = []
        dirty = 0
        for index in indices:
            page = mapping.pages[index]
            BUG_ON(m.flags[page] & (PG_LOCKED | PG_WRITEBACK), "truncate: page busy")
            if m.flags[page] & PG_DIRTY:
                dirty += 1
            cancel_dirty_page(m, page)
            delete_from_page_cache(mapping, page)
            pfns.append(page)
        if indices or xip:
            if indices:
                Stats.bump(self.stats_.drops, reason, len(indices))
            self.events.emit(
                schema.DROP,
                ino=mapping.host,
                reason=reason,
                first=first,
                pages=indices,
                pfns=pfns,
                dirty=dirty,
                xip_unmapped=xip,
            )
        vma = mapping.fs_vma
        if vma is None:
            return
        pgd = vma.vm_mm.pgd
        c0 = first >> PTE_SHIFT
        for no in [c for c in pgd if c >= c0]:
            chunk = pgd[no]
            lo = first - (no << PTE_SHIFT) if no == c0 else 0
            BUG_ON(
                np.any(chunk.pte_np[lo:] & _PAGE_PRESENT),
                "truncate: pte still present past EOF after unmap",
            )
            if lo == 0:
                del pgd[no]
            else:
                chunk.pte_np[lo:] = 0
                chunk.state[lo:] = 0

    def _zero_tail(self, mapping: AddressSpace, size: int, reason: str) -> None:
        """Zero the bytes past `size` in its page (truncate_inode_partial_folio): in the frame
        that holds the page, in place (no COW, no access counted, the dirty state kept); an
        XIP page's block is zeroed by the image in its own transaction (as dax_truncate_page),
        so mm only logs it. One `zero` event either way; nothing for a hole."""
        index = size >> PAGE_SHIFT
        tail = size & (PAGE_SIZE - 1)
        page = mapping.pages.get(index)
        if page is not None:
            self.machine.data[page, tail:] = 0
            home, pfn = schema.PAGECACHE, page
        else:
            pfn = mapping_bmap(mapping, index)
            if pfn < self._base:
                return
            home = schema.XIP
        Stats.bump(self.stats_.zeroed, reason)
        self.events.emit(
            schema.ZERO_EV,
            ino=mapping.host,
            index=index,
            home=home,
            pfn=pfn,
            offset=tail,
            length=PAGE_SIZE - tail,
            reason=reason,
        )

    def truncate(self, ino: int, new_size: int, reason: str = schema.REASON_TRUNCATE) -> None:
        """truncate_setsize: the new size first, then the partial tail page zeroed in place and
        every page past it unmapped and dropped unwritten. `reason` is `truncate`, or `o_trunc`
        for an open with O_TRUNC; it names the `zero` and `drop` events."""
        if new_size < 0:
            raise ValueError("negative size")
        mapping = self.address_space(ino)
        mapping.i_size = new_size
        if new_size & (PAGE_SIZE - 1):
            # First, so that the bmap hints its lookup may read ahead past the new
            # EOF are dropped with the rest below.
            self._zero_tail(mapping, new_size, reason)
        self._drop_pages(mapping, (new_size + PAGE_SIZE - 1) >> PAGE_SHIFT, reason)

    def evict_inode(self, ino: int) -> None:
        """The file is gone: drop its pages without writeback (a `drop` event, reason `evict`),
        and its vmas."""
        mapping = self._spaces.get(ino)
        if mapping is None:
            return
        self._drop_pages(mapping, 0, schema.REASON_EVICT)
        for vma in list(mapping.i_mmap):
            if vma.fs_owned:
                continue
            self.munmap(vma)
        del self._spaces[ino]
        vma = self._vmas.pop(ino)
        vma.vm_mm.pgd.clear()

    # -- writeback / migration --------------------------------------------------

    def _dirty_frames(self, ino: int | None = None) -> np.ndarray:
        m = self.machine
        mask = (m.flags & (PG_DIRTY | PG_ANON)) == PG_DIRTY
        if ino is not None:
            mask &= m.mapping == ino
        else:
            mask &= m.mapping != 0
        return np.flatnonzero(mask)

    def dirty_counts(self) -> dict[int, int]:
        """Dirty page-cache pages per inode (what a crash now would lose)."""
        frames = self._dirty_frames()
        if not len(frames):
            return {}
        inos, n = np.unique(self.machine.mapping[frames], return_counts=True)
        return dict(zip(inos.tolist(), n.tolist(), strict=True))

    def _writeback(self, frames: np.ndarray, reason: str) -> int:
        """Write `frames` back, one write_pages (one image transaction) per file."""
        m = self.machine
        done = 0
        if not len(frames):
            return 0
        for ino, sel in _by_owner(m.mapping[frames]):
            done += write_cache_pages(self._spaces[ino], frames[sel], reason)
        return done

    def nr_dirty(self) -> int:
        """Dirty page-cache frames (NR_FILE_DIRTY: the machine's running count, not a
        pass over the struct pages; tests tie it to the full count)."""
        return self.machine.nr_file_dirty

    def dirty_indices(self, ino: int) -> np.ndarray:
        """The page indices of `ino` dirty in DRAM, sorted: what a size pushed to the
        image must not cover (ordered data; the FUSE layer's flush_meta)."""
        mapping = self._spaces.get(ino)
        if mapping is None:
            return np.zeros(0, dtype=np.int64)
        return dirty_indices(mapping)

    def over_background_thresh(self) -> bool:
        """More dirty frames than dirty_background: the flusher has work."""
        return self.nr_dirty() > self.dirty_background_thresh

    def over_dirty_limit(self) -> bool:
        """Dirty frames at dirty_limit: writers wait."""
        return self.nr_dirty() >= self.dirty_thresh

    def balance_dirty_pages(self, ino: int) -> int:
        """After a write to `ino`: BDP_OK, BDP_BACKGROUND (past dirty_background: wake
        the flusher) or BDP_THROTTLE (at dirty_limit: the write's reply must wait
        until writeback_batch calls bring the dirty frames under the limit; counted
        and logged as a `throttle` event). A function of the mm state only, so a
        replay of the same calls throttles the same writes. As the kernel's
        balance_dirty_pages_ratelimited, the count is taken only once
        `ratelimit_pages` pages were written since the last one (BDP_OK meanwhile)."""
        if self._written_since_check < self.ratelimit_pages:
            return BDP_OK
        self._written_since_check = 0
        nr = self.nr_dirty()
        if nr <= self.dirty_background_thresh:
            return BDP_OK
        if nr < self.dirty_thresh:
            return BDP_BACKGROUND
        self.stats_.throttles += 1
        self.events.emit(
            schema.THROTTLE,
            ino=ino,
            dirty=nr,
            background=self.dirty_background_thresh,
            limit=self.dirty_thresh,
        )
        return BDP_THROTTLE

    def writeback_batch(self, reason: str = schema.REASON_BACKGROUND) -> int:
        """One batch of the flusher (wb_writeback): the oldest-dirtied pages, up to
        MAX_WRITEBACK_PAGES, each file's in index order in one write_pages. Returns
        how many were written (0: nothing dirty)."""
        m = self.machine
        dirty = self._dirty_frames()
        if not len(dirty):
            return 0
        if len(dirty) > MAX_WRITEBACK_PAGES:
            order = np.lexsort((m.index[dirty], m.mapping[dirty], m.dirtied_at[dirty]))
            dirty = dirty[order[:MAX_WRITEBACK_PAGES]]
        return self._writeback(dirty, reason)

    def fsync(self, ino: int) -> int:
        """Write back the inode's dirty pages (reason `fsync`); returns how many."""
        if ino not in self._spaces:
            return 0
        return self._writeback(self._dirty_frames(ino), schema.REASON_FSYNC)

    def sync_all(self, reason: str = schema.REASON_SYNC) -> int:
        """Write back every dirty page (reason `sync`, `unmount`, ...); returns how many."""
        return self._writeback(self._dirty_frames(), reason)

    def _cache_frames(self) -> np.ndarray:
        """Page-cache frames that may be demoted now: not anon, locked or under writeback,
        and held by nobody but the page cache and their ptes (page_freezable: demoting a
        page someone else holds would free no frame)."""
        m = self.machine
        busy = PG_ANON | PG_LOCKED | PG_WRITEBACK
        frames = np.flatnonzero((m.mapping != 0) & ((m.flags & busy) == 0))
        return reclaimable_frames(m, frames)

    def _demote(self, page: int, reason: str) -> bool:
        m = self.machine
        mapping = self._spaces[int(m.mapping[page])]
        index = int(m.index[page])
        if not demote(mapping, page, reason):
            return False
        vma = mapping.fs_vma
        if vma is not None:
            chunk = vma.vm_mm.pgd.get(index >> PTE_SHIFT)
            if chunk is not None:
                slot = index & 511
                chunk.state[slot] = self.policy.on_demote(int(chunk.state[slot]))
        return True

    def shrink_page_list(self, pages: np.ndarray, reason: str) -> int:
        """Demote isolated page-cache frames: the dirty ones are written back first,
        together (pageout of the whole list: one write_pages per file, reason
        `demote`), then all leave the page cache for their NVRAM blocks (`reason`).
        Frames that are busy (locked, under writeback) or redirtied meanwhile stay.
        Returns how many were demoted."""
        m = self.machine
        pages = np.asarray(pages, dtype=np.int64)
        busy = PG_ANON | PG_LOCKED | PG_WRITEBACK
        pages = pages[(m.mapping[pages] != 0) & ((m.flags[pages] & busy) == 0)]
        pages = reclaimable_frames(m, pages)  # held by someone else: no frame to free
        return self._shrink_isolated(pages, reason)

    def _shrink_isolated(
        self, pages: np.ndarray, reason: str, dirty: np.ndarray | None = None
    ) -> int:
        """shrink_page_list of frames already isolated: cached, not busy, held by
        nobody but the page cache and their ptes (as _isolate and the filter above
        leave them). `dirty`: the dirty ones among them, when the caller knows."""
        m = self.machine
        if not len(pages):
            return 0
        if dirty is None:
            isdirty = (m.flags[pages] & PG_DIRTY) != 0
            if np.count_nonzero(isdirty):
                self._writeback(pages[isdirty], schema.REASON_DEMOTE)
        elif len(dirty):
            self._writeback(dirty, schema.REASON_DEMOTE)
        # The usual batch: clean pages of one file in one page-table chunk, all
        # demoted together (demote_clean_chunk, which checks that they are).
        mapping = self._spaces.get(int(m.mapping[pages[0]]))
        if mapping is not None:
            done = demote_clean_chunk(mapping, np.asarray(pages, dtype=np.int64), reason)
            if done is not None:
                self._policy_demoted_slots(*done)
                return len(pages)
        owners = m.mapping[pages]
        idx = m.index[pages]
        ino = int(owners[0])
        if ino == int(owners[-1]) and not np.count_nonzero(owners != ino):
            # The usual batch: the pages of one file.
            mapping = self._spaces[ino]
            n = demote_clean_pages(mapping, pages, reason)
            if n:
                self._policy_demoted(mapping, idx, all_gone=n == len(pages))
            return n
        done = 0
        for ino, sel in _by_owner(owners):
            mapping = self._spaces[ino]
            n = demote_clean_pages(mapping, pages[sel], reason)
            done += n
            if n:
                self._policy_demoted(mapping, idx[sel], all_gone=n == len(sel))
        return done

    def _policy_demoted(
        self, mapping: AddressSpace, indices: np.ndarray, all_gone: bool = False
    ) -> None:
        """Tell the policy about the pages of `indices` that left the page cache
        (`all_gone`: the caller knows every one did)."""
        vma = mapping.fs_vma
        if vma is None:
            return
        pgd = vma.vm_mm.pgd
        cache = mapping.pages
        if cache and not all_gone:
            gone = np.array([i not in cache for i in indices.tolist()], dtype=bool)
            if not gone.all():
                indices = indices[gone]
        if not len(indices):
            return
        nos = indices >> PTE_SHIFT
        no0 = int(nos[0])
        if no0 == int(nos[-1]) and not np.count_nonzero(nos != no0):
            groups = [(no0, None)]  # the usual batch: one page-table chunk
        else:
            groups = groups_of(nos)
        for no, sel in groups:
            chunk = pgd.get(no)
            if chunk is None:
                continue
            self._policy_demoted_slots(
                chunk, (indices if sel is None else indices[sel]) & PTE_INDEX_MASK
            )

    def _policy_demoted_slots(self, chunk: Chunk, slots: np.ndarray) -> None:
        """The policy's words of the pages at `slots` of `chunk`, which left the page
        cache: on_demote of each (the base policy's bit operations take the whole
        array of words at once; a policy that overrides on_demote gets one call per
        page, as _demote makes)."""
        on_demote = self.policy.on_demote
        words = chunk.state[slots]
        if type(self.policy).on_demote is Policy.on_demote:
            chunk.state[slots] = on_demote(words)
        else:
            chunk.state[slots] = [on_demote(w) for w in words.tolist()]

    def _reclaim(self) -> bool:
        """Direct reclaim (shrink_inactive_list): isolate up to SWAP_CLUSTER_MAX of the
        policy's coldest frames (among the coldest 4x that many), clean ones first,
        and demote them (reason dram_budget) through shrink_page_list, which writes
        the dirty ones back in one batch. A per-access policy frees exactly one
        (demand.reclaim_one: lru stays exact). True when at least one frame was freed."""
        if self._demand:
            return reclaim_one(self)
        free = self.machine.free_list
        before = len(free)
        victims, dirty = self._reclaim_victims()
        if not len(victims):
            return False
        self._shrink_isolated(victims, schema.REASON_DRAM_BUDGET, dirty)
        return len(free) > before

    def _reclaim_victims(self) -> tuple[np.ndarray, np.ndarray]:
        """One reclaim pass's victims and the dirty ones among them (at their end): up
        to `batch` of the first 4*batch candidates _isolate finds, clean ones first."""
        m = self.machine
        batch = min(SWAP_CLUSTER_MAX, max(1, m.dram_pages // 4))
        victims = self._isolate_clean(batch)
        if victims is not None:
            return victims, victims[:0]
        victims = self._isolate(4 * batch)
        isdirty = (m.flags[victims] & PG_DIRTY) != 0
        if not np.count_nonzero(isdirty):
            return victims[:batch], victims[:0]
        clean = victims[~isdirty][:batch]
        if len(clean) < batch:
            dirty = victims[isdirty][: batch - len(clean)]
            return np.concatenate([clean, dirty]), dirty
        return clean, victims[:0]

    def _isolate_clean(self, batch: int) -> np.ndarray | None:
        """The usual pass, cheaply: when the next 2*batch ranked entries hold `batch`
        valid candidates and those are all clean, they are the victims the general
        path (_isolate of 4*batch, clean ones first) would choose, and _isolate would
        leave the list at the first of them. None: take the general path."""
        if self._inactive is None:
            return None
        m = self.machine
        frames, seqs = self._inactive
        pos = self._inactive_pos
        w = frames[pos : pos + 2 * batch]
        if len(w) < batch:
            return None
        f = m.flags[w]
        ok = (self._lru_seq[w] == seqs[pos : pos + len(w)]) & (m.mapping[w] != 0)
        ok &= (f & (PG_ANON | PG_LOCKED | PG_WRITEBACK)) == 0
        ok &= m._refcount[w] - m._mapcount[w] == 2  # reclaimable: 1 + mapcount
        good = ok.nonzero()[0]
        if len(good) < batch:
            return None
        good = good[:batch]
        if np.count_nonzero(f[good] & PG_DIRTY):
            return None
        self._inactive_pos = pos + int(good[0])
        return w[good]

    def _isolate(self, n: int) -> np.ndarray:
        """The next `n` reclaim candidates still valid (cached, not busy, not reused)
        from the ranked list, which is (re)taken from the policy when used up."""
        m = self.machine
        busy = PG_ANON | PG_LOCKED | PG_WRITEBACK
        fresh = False
        while True:
            if self._inactive is None or self._inactive_pos >= len(self._inactive[0]):
                if fresh:
                    return np.zeros(0, dtype=np.int64)
                frames = self.policy.victims(self._cache_frames())
                self._inactive = (frames, self._lru_seq[frames])
                self._inactive_pos = 0
                fresh = True
            frames, seqs = self._inactive
            pos = self._inactive_pos
            # The first n still valid among the next 4n; looked for in the next 2n
            # first (the usual case: only the last pass's victims are gone).
            for span in (2 * n, 4 * n):
                w = frames[pos : pos + span]
                ok = (self._lru_seq[w] == seqs[pos : pos + len(w)]) & (m.mapping[w] != 0)
                ok &= (m.flags[w] & busy) == 0
                ok &= m._refcount[w] - m._mapcount[w] == 2  # reclaimable: 1 + mapcount
                good = ok.nonzero()[0]
                if len(good) >= n or len(w) < span:
                    break
            if not len(good):
                self._inactive_pos = pos + len(w)
                continue
            self._inactive_pos = pos + int(good[0])
            return w[good[:n]]

    def demote_all(self, reason: str = schema.REASON_CTL) -> int:
        """Demote every page-cache page (the dirty ones written back in one batch);
        returns how many."""
        return self.shrink_page_list(self._cache_frames(), reason)

    def promote(self, ino: int, index: int, reason: str = schema.REASON_CTL) -> bool:
        """Promote one XIP page into the page cache, making room if the budget is full."""
        mapping = self.address_space(ino)
        if index in mapping.pages:
            return False
        if not self.machine.free_list and not self._reclaim():
            return False
        return promote(mapping, index, reason) is not None

    def set_policy(self, name: str) -> None:
        """Switch the replacement policy (its state starts afresh)."""
        policy = make_policy(name, self.machine.nr_frames)
        policy.begin_tick(self._tick)
        for page in np.flatnonzero(self.machine.mapping != 0).tolist():
            policy.on_alloc(page)
        for vma in self._vmas.values():
            for chunk in vma.vm_mm.pgd.values():
                chunk.state[:] = 0
        self.policy = policy
        self._demand = policy.per_access
        self._inactive = None

    # -- tick -----------------------------------------------------------------------

    def tick(self) -> None:
        """Once a second: dirty expiry, the policy's pass, access histograms, counters, flush."""
        m = self.machine
        now = self.clock()
        self._tick += 1
        policy = self.policy
        policy.begin_tick(self._tick)
        self._inactive = None
        # Dirty pages older than the writeback interval.
        dirty = self._dirty_frames()
        if len(dirty):
            old = dirty[m.dirtied_at[dirty] <= now - self.writeback_seconds]
            self._writeback(old, schema.REASON_DIRTY_EXPIRE)
        # The interval's accesses: histogram events, policy scan.
        self._run_policy(*self._scan_interval(self._end_interval(now)))
        policy.end_tick()
        self.events.emit(schema.COUNTERS, **self._counters())
        self.events.flush(wait=False)

    def _scan_interval(self, interval: Interval) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The policy's pass over the interval (page_referenced of every touched pte).

        The touched page-table chunks still mapped are seen as one array of
        pages, in the interval's chunk order: the pages hit in the interval or
        with a young pte go to `policy.scan_chunk` in ONE call (the policies
        are elementwise; a page neither hit nor young is nothing to them),
        their policy words are stored back, and every young bit of those
        chunks is cleared. Returns the promotion candidates as (page index,
        inode, score) arrays in page order: the order a scan chunk by chunk,
        page by page would find them in."""
        chunks, hosts, live, hits = interval
        if not live.all():
            keep = np.flatnonzero(live)
            chunks = [chunks[i] for i in keep.tolist()]
            hosts = hosts[keep]
            hits = hits.reshape(-1, PTRS_PER_PTE)[keep].reshape(-1)
        empty = np.zeros(0, dtype=np.int64)
        if not chunks:
            return empty, empty, np.zeros(0, dtype=np.float32)
        ptes = np.concatenate([c.pte_np for c in chunks])
        young = (ptes & _PAGE_YOUNG) == _PAGE_YOUNG  # present and accessed
        for c in chunks:
            c.pte_np &= _NOT_YOUNG  # the sweep clears the young bits (page_referenced)
        pos = np.flatnonzero((hits > 0) | young)
        if not len(pos):
            return empty, empty, np.zeros(0, dtype=np.float32)
        ci = pos >> PTE_SHIFT
        slot = pos & PTE_INDEX_MASK
        ptes = ptes[pos]
        young = young[pos]
        pfns = ptes >> PTE_PFN_SHIFT
        frames = np.where(((ptes & _PAGE_PRESENT) != 0) & (pfns < self._nr_frames), pfns, 0)
        promotable = pfns >= self._base
        words = np.concatenate([c.state for c in chunks])[pos]
        before = words.copy()
        scores = self.policy.scan_chunk(words, hits[pos], young, frames, promotable)
        changed = np.flatnonzero(words != before)
        if len(changed):
            cc = ci[changed]
            cut = np.flatnonzero(cc[1:] != cc[:-1]) + 1
            for a, b in zip([0, *cut.tolist()], [*cut.tolist(), len(cc)], strict=True):
                sel = changed[a:b]
                chunks[int(cc[a])].state[slot[sel]] = words[sel]
        c = np.flatnonzero(scores > 0)
        nos = np.fromiter((ch.no for ch in chunks), dtype=np.int64, count=len(chunks))
        return (nos[ci[c]] << PTE_SHIFT) + slot[c], hosts[ci[c]], scores[c]

    def _end_interval(self, now: float) -> Interval:
        """Close the access interval at `now`: log its histograms, zero its counters.

        One `access` event per file touched (docs/EVENTS.md), keyed by
        (inode, generation). Returns the touched page-table chunks in a
        deterministic order (by mm_struct name, then chunk number: a replay
        scans them as the mount did), the inode each chunk's mm maps (0:
        none), whether each chunk is still in its page table, and the
        interval's hits (loads + stores) of their pages, chunk after chunk;
        unmount calls it to log the last, partial interval.
        """
        touched, self._touched = self._touched, []
        self._gen += 1
        t0, t1 = self._t_interval - self.events_t0, now - self.events_t0
        self._t_interval = now
        chunks = sorted(touched, key=lambda c: (c.owner.name, c.no))  # deterministic (replay)
        n = len(chunks)
        if not n:
            return [], np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool), np.zeros(0, np.int64)
        reads = np.concatenate([c.reads_np for c in chunks])
        writes = np.concatenate([c.writes_np for c in chunks])
        for c in chunks:
            c.reads_np.fill(0)
            c.writes_np.fill(0)
        hits = reads.astype(np.int64)
        hits += writes
        hosts = np.zeros(n, dtype=np.int64)
        live = np.zeros(n, dtype=bool)
        files: dict[tuple[int, int], list[int]] = {}
        for i, c in enumerate(chunks):
            vma = c.owner.vmas[0] if c.owner.vmas else None
            if vma is None:
                continue
            live[i] = vma.vm_mm.pgd.get(c.no) is c
            f = vma.vm_file
            if f is not None:
                hosts[i] = f.host
                files.setdefault((f.host, f.i_generation), []).append(i)
        if files and type(self.events) is not NullEventWriter:  # it keeps nothing
            idx = np.flatnonzero(hits)
            ci = idx >> PTE_SHIFT
            nos = np.fromiter((c.no for c in chunks), dtype=np.int64, count=n)
            pages = (nos[ci] << PTE_SHIFT) + (idx & PTE_INDEX_MASK)
            for ino, gen in sorted(files):
                if len(files) > 1:
                    mine = np.zeros(n, dtype=bool)
                    mine[files[(ino, gen)]] = True
                    at = mine[ci]
                    sel, file_pages = idx[at], pages[at]
                else:
                    sel, file_pages = idx, pages
                if not len(sel):
                    continue
                self.events.emit(
                    schema.ACCESS,
                    ino=ino,
                    gen=gen,
                    t0=round(t0, 6),
                    t1=round(t1, 6),
                    pages=file_pages.tolist(),
                    reads=reads[sel].tolist(),
                    writes=writes[sel].tolist(),
                )
        return chunks, hosts, live, hits

    @property
    def events_t0(self) -> float:
        return float(getattr(self.events, "t0", getattr(self.events, "_t0", 0.0)))

    def _run_policy(self, idx: np.ndarray, inos: np.ndarray, scores: np.ndarray) -> None:
        """Promote the best candidates (page `idx` of inode `inos`, by `scores`, ties in
        page order), evicting the policy's victims when it admits them; then demote the
        frames it finds cold."""
        m = self.machine
        policy = self.policy
        if len(idx):
            order = np.argsort(-scores, kind="stable")[: self.max_promote_per_tick]
            victims: list[int] | None = None
            vpos = 0
            for k in order.tolist():
                ino, index, score = int(inos[k]), int(idx[k]), float(scores[k])
                mapping = self._spaces.get(ino)
                if mapping is None or index in mapping.pages:
                    continue
                if not m.free_list:
                    if victims is None:
                        victims = policy.victims(self._cache_frames()).tolist()
                    while vpos < len(victims) and m.mapping[victims[vpos]] == 0:
                        vpos += 1
                    if vpos >= len(victims) or not policy.admit(score, victims[vpos]):
                        break
                    self._demote(victims[vpos], schema.REASON_DRAM_BUDGET)
                    vpos += 1
                    if not m.free_list:
                        continue
                promote(mapping, index, schema.REASON_POLICY)
        cold = policy.cold_frames(self._cache_frames())
        if len(cold):
            self.shrink_page_list(cold, schema.REASON_POLICY)

    # -- reporting ------------------------------------------------------------------

    def _counters(self) -> dict[str, Any]:
        """The `counters` object, with `modelled_ns` when a device model listens."""
        out = self.stats_.snapshot(self.machine)
        if self.device is not None:
            out["modelled_ns"] = self.device.account(out)
        return out

    def stats(self) -> dict[str, Any]:
        """JSON-able: the `counters` object of EVENTS.md, plus `residency` totals, `policy`,
        `pte_special`, `kernel` and `tick`."""
        m = self.machine
        cache = int(np.count_nonzero((m.mapping != 0) & ((m.flags & PG_ANON) == 0)))
        anon = int(np.count_nonzero((m.flags & PG_ANON) != 0))
        out = self._counters()
        out["residency"] = {
            "files": len(self._spaces),
            "pagecache": cache,
            "anon": anon,
            "xip_mapped": self.stats_.xip_mapped,
            "free": len(m.free_list),
            "dram_pages": m.dram_pages,
        }
        out["policy"] = self.policy.name
        out["pte_special"] = m.pte_special
        out["kernel"] = m.kernel
        out["tick"] = self._tick
        return out

    def residency(self, ino: int) -> dict[str, int]:
        """{"pages", "xip", "pagecache", "dirty"} of one file: where its mapped pages live."""
        mapping = self._spaces.get(ino)
        if mapping is None:
            return {"pages": 0, "xip": 0, "pagecache": 0, "dirty": 0}
        xip = 0
        vma = self._vmas[ino]
        for chunk in vma.vm_mm.pgd.values():
            p = chunk.pte_np
            xip += int(
                np.count_nonzero((p & _PAGE_PRESENT != 0) & ((p >> PTE_PFN_SHIFT) >= self._base))
            )
        cache = len(mapping.pages)
        dirty = len(self._dirty_frames(ino))
        return {"pages": xip + cache, "xip": xip, "pagecache": cache, "dirty": dirty}

    def set_dram_budget(self, pages: int) -> int:
        """Offline or online DRAM frames, as memory hot-(un)plug does: the budget becomes
        `pages`, at most the frames the machine was built with (`nr_frames - 1`).

        Offlining takes free frames off the free list and marks them PG_reserved
        with a reference (the kernel's offline pages: never allocated, never
        freed); with no free frame, direct reclaim demotes the policy's coldest
        pages first (reason `dram_budget`, dirty ones written back). Onlining puts
        offlined frames back on the free list. Returns the budget now."""
        m = self.machine
        if not 1 <= pages <= m.nr_frames - 1:
            raise ValueError(
                f"the DRAM budget can be 1 to {m.nr_frames - 1} frames (the size at mount)"
            )
        while m.dram_pages > pages:
            if not m.free_list and not self._reclaim():
                raise OSError(errno.EBUSY, "no frame can be freed to shrink the DRAM budget")
            pfn = m.free_list.pop()
            m._refcount[pfn] = 1
            m.flags[pfn] = PG_RESERVED
            self._offline.append(pfn)
            m.dram_pages -= 1
        while m.dram_pages < pages:
            pfn = self._offline.pop()
            m._refcount[pfn] = 0
            m.flags[pfn] = 0
            m.free_list.append(pfn)
            m.dram_pages += 1
        return m.dram_pages

    def residency_map(self, ino: int, nr_pages: int) -> list[list[Any]]:
        """Where each page [0, nr_pages) of a file lives, run-length encoded:
        `[[state, first_index, count], ...]`, state one of RESIDENCY_STATES: `dirty`
        (a dirty pagecache frame), `pagecache` (a clean frame), `xip` (no frame: the
        NVRAM block serves it), `hole` (no frame, no block: reads as zeros)."""
        if nr_pages <= 0:
            return []
        idx = codes = np.zeros(0, np.int64)
        mapping = self._spaces.get(ino)
        if mapping is not None and mapping.pages:
            idx = np.fromiter(mapping.pages.keys(), np.int64, len(mapping.pages))
            frames = np.fromiter(mapping.pages.values(), np.int64, len(mapping.pages))
            keep = idx < nr_pages
            idx, frames = idx[keep], frames[keep]
            order = np.argsort(idx)
            idx, frames = idx[order], frames[order]
            codes = np.where((self.machine.flags[frames] & PG_DIRTY) != 0, 3, 2)
        runs = getattr(self.backing, "mapped_runs", None)
        if runs is not None:
            starts, lens = runs(ino, 0, nr_pages)
            return residency_runs(nr_pages, starts, lens, idx, codes)
        # A backing without runs (a trace's): one state per page.
        state = (np.asarray(self.backing.bmap(ino, 0, nr_pages)) != 0).astype(np.uint8)
        state[idx] = codes
        return run_lengths(state, RESIDENCY_STATES)

    def close(self) -> None:
        """Write back everything (reason `unmount`), log the last counters, flush the log."""
        if self._closed:
            return
        self.sync_all(schema.REASON_UNMOUNT)
        self._end_interval(self.clock())  # the last, partial interval's histograms
        self.events.emit(schema.COUNTERS, **self._counters())
        self.events.flush()
        self._closed = True


# The states of residency_map, by their code in its array.
RESIDENCY_STATES = ("hole", "xip", "pagecache", "dirty")


def residency_runs(
    nr_pages: int,
    starts: np.ndarray,
    lens: np.ndarray,
    cached: np.ndarray,
    codes: np.ndarray,
) -> list[list[Any]]:
    """residency_map's runs over [0, nr_pages) from the runs of pages with a block
    (`starts`, `lens`: ascending, disjoint; `xip` unless cached, else `hole`) and the
    cached pages (`cached`: ascending indices below nr_pages, `codes`: 2 pagecache,
    3 dirty). Work and memory follow the runs and the cached pages, not the file's
    length: a sparse file may span terabytes."""
    xs = np.asarray(starts, np.int64)
    xe = xs + np.asarray(lens, np.int64)
    cuts = np.unique(np.concatenate([[0, nr_pages], xs, xe, cached, cached + 1]))
    seg = cuts[cuts < nr_pages]
    code = np.zeros(len(seg), np.uint8)
    if len(xs):
        i = np.searchsorted(xs, seg, side="right") - 1
        ic = np.maximum(i, 0)
        code[(i >= 0) & (seg < xe[ic])] = 1
    if len(cached):
        j = np.minimum(np.searchsorted(cached, seg), len(cached) - 1)
        hit = cached[j] == seg
        code[hit] = codes[j[hit]]
    first = np.r_[True, code[1:] != code[:-1]]
    run_starts = seg[first]
    counts = np.diff(np.append(run_starts, nr_pages))
    return [
        [RESIDENCY_STATES[c], s, n]
        for c, s, n in zip(code[first].tolist(), run_starts.tolist(), counts.tolist(), strict=True)
    ]


def run_lengths(codes: np.ndarray, names: tuple[str, ...]) -> list[list[Any]]:
    """[[names[code], first, count], ...] for each run of equal codes (one numpy pass)."""
    if len(codes) == 0:
        return []
    starts = np.flatnonzero(np.diff(codes.astype(np.int16), prepend=-1) != 0)
    counts = np.diff(np.append(starts, len(codes)))
    return [
        [names[int(codes[s])], int(s), int(n)]
        for s, n in zip(starts.tolist(), counts.tolist(), strict=True)
    ]
