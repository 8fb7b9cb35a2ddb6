"""mm/memory.c: the page-table side of the VM, with the kernel's names and rules.

A "struct page *" is a frame's pfn here (struct page lives in the Machine's
arrays); None stands for NULL. Every function that the kernel has is named
as in the kernel, and a comment above it states its contract. Where the two
rule sets differ (a machine with pte_special, as x86 has today, and one
without, the 2008 rule that commit b379d790 wrote for VM_MIXEDMAP), the
machine's `pte_special` chooses; where kernels differ as a whole (do_wp_page
on a raw pfn, ->pfn_mkwrite, the zero page), the machine's `kernel` does
(machine.py: `2.6.26-rc1`, `2.6.26`, `modern`).

One thread runs the whole VM, so the kernel's locks (page-table lock,
mmap_lock) are not modelled; page locks are (PG_locked), because the
fault paths' contracts are written in terms of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..events import schema
from .bug import BUG_ON, VM_BUG_ON_PAGE, MMBug
from .flags import (
    _PAGE_ACCESSED,
    _PAGE_BMAP,
    _PAGE_DIRTY,
    _PAGE_PRESENT,
    _PAGE_RW,
    _PAGE_SPECIAL,
    EBUSY,
    EFAULT,
    FAULT_FLAG_MKWRITE,
    FAULT_FLAG_WRITE,
    PAGE_MASK,
    PAGE_SHIFT,
    PAGE_SIZE,
    PTE_PFN_SHIFT,
    VM_FAULT_ERROR,
    VM_FAULT_LOCKED,
    VM_FAULT_NOPAGE,
    VM_FAULT_OOM,
    VM_FAULT_RETRY,
    VM_FAULT_SIGBUS,
    VM_FAULT_SIGSEGV,
    VM_MAYSHARE,
    VM_MIXEDMAP,
    VM_PFNMAP,
    VM_READ,
    VM_SHARED,
    VM_WRITE,
    is_cow_mapping,
    pte_pfn,
)
from .machine import (
    KERNEL_2626,
    PG_ANON,
    PG_DIRTY,
    PG_LOCKED,
    PG_REFERENCED,
    PG_UPTODATE,
    ZERO_PFN,
)
from .stats import FK_COW, FK_WRITE_REUSE
from .vma import PTE_INDEX_MASK, PTE_SHIFT, PTRS_PER_PTE, VMA, Chunk

if TYPE_CHECKING:
    from .filemap import AddressSpace
    from .machine import Machine


class VMFault:
    """struct vm_fault: one fault being handled."""

    __slots__ = (
        "vma",
        "address",
        "pgoff",
        "flags",
        "orig_pte",
        "chunk",
        "slot",
        "page",
        "cow_page",
    )

    def __init__(self, vma: VMA, address: int, flags: int) -> None:
        self.vma = vma
        self.address = address & PAGE_MASK
        self.pgoff = vma.linear_page_index(address)
        self.flags = flags
        self.orig_pte = 0
        self.chunk: Chunk
        self.slot = 0
        self.page: int | None = None
        self.cow_page: int | None = None

    @property
    def write(self) -> bool:
        return bool(self.flags & FAULT_FLAG_WRITE)


def _machine(vma: VMA) -> Machine:
    return vma.vm_mm.machine


# lock_page / unlock_page: PG_locked. One thread: taking a lock that is held
# would sleep forever, so it is a bug here.
def lock_page(m: Machine, page: int) -> None:
    VM_BUG_ON_PAGE(m.flags[page] & PG_LOCKED, m, page, "lock_page: page already locked")
    m.flags[page] = int(m.flags[page]) | PG_LOCKED


def unlock_page(m: Machine, page: int) -> None:
    VM_BUG_ON_PAGE(not m.flags[page] & PG_LOCKED, m, page, "unlock_page: page not locked")
    m.flags[page] = int(m.flags[page]) & ~PG_LOCKED


# page_add_file_rmap: one more pte maps this file (or zero) page.
def page_add_file_rmap(m: Machine, page: int) -> None:
    VM_BUG_ON_PAGE(m.flags[page] & PG_ANON, m, page, "page_add_file_rmap on an anon page")
    m._mapcount[page] += 1


# page_add_new_anon_rmap: the first (and only) pte maps a new anonymous page.
def page_add_new_anon_rmap(m: Machine, page: int, index: int) -> None:
    VM_BUG_ON_PAGE(m._mapcount[page] != -1, m, page, "new anon page already mapped")
    m._mapcount[page] = 0
    m.set_page_flags(page, int(m.flags[page]) | PG_ANON | PG_UPTODATE)
    m.index[page] = index


# page_remove_rmap: one pte less maps this page; _mapcount below -1 is a bug.
def page_remove_rmap(m: Machine, page: int) -> None:
    mc = int(m._mapcount[page]) - 1
    VM_BUG_ON_PAGE(mc < -1, m, page, "page_remove_rmap: _mapcount underflow")
    m._mapcount[page] = mc


# set_page_dirty: mark a page cache page dirty (a store reached it); starts
# the dirty-expiry clock when the page goes from clean to dirty.
def set_page_dirty(m: Machine, page: int) -> bool:
    f = int(m.flags[page])
    if f & PG_DIRTY:
        return False
    m.flags[page] = f | PG_DIRTY
    if not f & PG_ANON:
        m.nr_file_dirty += 1
        m.dirtied_at[page] = m.clock()
    return True


# vm_normal_page: the struct page behind a pte, or None when there is none
# the VM may touch (no refcount, no rmap).
#
# With pte_special (x86 today): a special pte has no struct page to the VM
# in a VM_PFNMAP or VM_MIXEDMAP vma (and the zero page is special); any
# other special pte is a bad pte. A normal pte always has one (a pfn without
# a struct page under a normal pte is a bad pte).
#
# Without pte_special (the 2008 rules, b379d790): a raw VM_PFNMAP mapping
# honours remap_pfn_range's linearity rule,
#     pfn == vm_pgoff + ((addr - vm_start) >> PAGE_SHIFT),
# so a pte that follows it is raw (None); a pte that does not was COWed,
# which only a COW mapping can do (else None), and the COWed page is a
# normal page. In a VM_MIXEDMAP mapping every pfn_valid pfn is refcounted
# and returned, every other one is not (None): that is what lets one vma mix
# pages that have a struct page with pages that have none, and COW both.
# Today's kernels add is_zero_pfn: the zero page is never a normal page,
# in a VM_MIXEDMAP vma or any other (2.6.26 refcounted it like any page).
def vm_normal_page(vma: VMA, addr: int, pte: int) -> int | None:
    m = vma.vm_mm.machine
    pfn = pte >> PTE_PFN_SHIFT
    flags = vma.vm_flags
    if m.pte_special:
        if pte & _PAGE_SPECIAL:
            if flags & (VM_PFNMAP | VM_MIXEDMAP):
                return None
            if pfn == ZERO_PFN:
                return None
            raise MMBug("print_bad_pte", f"special pte {pte:#x} at {addr:#x} in a normal vma")
    else:
        if flags & (VM_PFNMAP | VM_MIXEDMAP):
            if flags & VM_MIXEDMAP:
                if not m.pfn_valid(pfn):
                    return None
                if pfn == ZERO_PFN and not m.zero_page_refcounted:
                    return None
                return pfn
            off = (addr - vma.vm_start) >> PAGE_SHIFT
            if pfn == vma.vm_pgoff + off:
                return None
            if not is_cow_mapping(flags):
                return None
        if pfn == ZERO_PFN and not m.zero_page_refcounted:
            return None
    if not m.pfn_valid(pfn):
        raise MMBug("print_bad_pte", f"pte {pte:#x} at {addr:#x}: pfn {pfn:#x} has no struct page")
    return pfn


def _check_range(vma: VMA, addr: int) -> bool:
    return vma.vm_start <= addr < vma.vm_end


# insert_pfn: map `pfn` at `addr` with no struct page behind it (a special
# pte on a pte_special machine), read-only, not refcounted. -EBUSY if a pte
# is already there.
def insert_pfn(vma: VMA, addr: int, pfn: int) -> int:
    m = vma.vm_mm.machine
    chunk, slot = vma.vm_mm.get_locked_pte(addr)
    if chunk.pte[slot] & _PAGE_PRESENT:
        return -EBUSY
    bits = _PAGE_PRESENT | (_PAGE_SPECIAL if m.pte_special else 0) | vm_page_prot_rw(vma)
    chunk.pte[slot] = (pfn << PTE_PFN_SHIFT) | bits
    if vma.fs_owned and pfn >= m.nvram_base_pfn:
        m.stats.xip_mapped += 1
    return 0


# insert_page: map a page that has a struct page, refcounted: the pte holds
# a reference (get_page) and counts in the page's mapcount; with the vma's
# vm_page_prot. -EINVAL for an anonymous page, -EBUSY if a pte is already
# there.
def insert_page(vma: VMA, addr: int, page: int) -> int:
    m = vma.vm_mm.machine
    if m.flags[page] & PG_ANON:
        return -22
    chunk, slot = vma.vm_mm.get_locked_pte(addr)
    if chunk.pte[slot] & _PAGE_PRESENT:
        return -EBUSY
    m.get_page(page)
    vma.vm_mm.rss_file += 1
    page_add_file_rmap(m, page)
    chunk.pte[slot] = (page << PTE_PFN_SHIFT) | _PAGE_PRESENT | vm_page_prot_rw(vma)
    return 0


# vm_insert_pfn: insert a pfn the VM must not refcount into a user vma, from
# a ->fault handler. The vma must be VM_PFNMAP or VM_MIXEDMAP, not both; a
# VM_PFNMAP vma must not be a COW mapping (its COW needs the linearity rule,
# which a single inserted pfn breaks); a VM_MIXEDMAP vma must not be given a
# pfn_valid pfn (those must be refcounted: use vm_insert_mixed). Each of
# these is a BUG_ON. -EFAULT outside the vma.
def vm_insert_pfn(vma: VMA, addr: int, pfn: int) -> int:
    m = vma.vm_mm.machine
    flags = vma.vm_flags
    BUG_ON(
        not flags & (VM_PFNMAP | VM_MIXEDMAP),
        "vm_insert_pfn: vma is neither VM_PFNMAP nor VM_MIXEDMAP",
    )
    BUG_ON(
        (flags & (VM_PFNMAP | VM_MIXEDMAP)) == (VM_PFNMAP | VM_MIXEDMAP),
        "vm_insert_pfn: vma is both VM_PFNMAP and VM_MIXEDMAP",
    )
    BUG_ON(
        bool(flags & VM_PFNMAP) and is_cow_mapping(flags),
        "vm_insert_pfn: VM_PFNMAP on a COW mapping",
    )
    BUG_ON(
        bool(flags & VM_MIXEDMAP) and m.pfn_valid(pfn),
        "vm_insert_pfn: VM_MIXEDMAP given a pfn_valid pfn",
        f"pfn {pfn:#x}",
    )
    if not _check_range(vma, addr):
        return -EFAULT
    return insert_pfn(vma, addr, pfn)


# vm_insert_mixed: insert any pfn into a VM_MIXEDMAP vma (its only BUG_ON: a
# vma without VM_MIXEDMAP; COW mappings are fine, that is the point of
# MIXEDMAP). Without pte_special the pfn_valid rule of vm_normal_page must
# hold, so a pfn_valid pfn is inserted as a refcounted page (insert_page);
# everything else, and everything on a pte_special machine, as a raw pfn.
# Today's insert_page maps the zero page without a reference (is_zero_pfn):
# the same pte insert_pfn makes.
def vm_insert_mixed(vma: VMA, addr: int, pfn: int) -> int:
    BUG_ON(not vma.vm_flags & VM_MIXEDMAP, "vm_insert_mixed: vma without VM_MIXEDMAP")
    if not _check_range(vma, addr):
        return -EFAULT
    m = vma.vm_mm.machine
    if not m.pte_special and m.pfn_valid(pfn):
        if pfn != ZERO_PFN or m.zero_page_refcounted:
            return insert_page(vma, addr, pfn)
    return insert_pfn(vma, addr, pfn)


# vma_wants_writenotify: must the first store to a page of this vma fault
# (so the filesystem hears of it, ->page_mkwrite / ->pfn_mkwrite, or the
# page is dirty-accounted)? Only a shared writable vma can say yes: when it
# has a mkwrite handler, or maps a file whose dirty pages are written back.
def vma_wants_writenotify(vma: VMA) -> bool:
    if vma.vm_flags & (VM_WRITE | VM_SHARED) != VM_WRITE | VM_SHARED:
        return False
    ops = vma.vm_ops
    if ops is not None and (ops.page_mkwrite is not None or ops.pfn_mkwrite is not None):
        return True
    if vma.vm_flags & VM_PFNMAP:
        return False
    return vma.vm_file is not None


# vm_page_prot_rw: the write bit vm_page_prot gives a pte inserted by
# insert_pfn / insert_page: writable in a shared writable vma that does not
# want write notification; read-only otherwise (private vmas COW).
def vm_page_prot_rw(vma: VMA) -> int:
    if vma.vm_flags & (VM_WRITE | VM_SHARED) != VM_WRITE | VM_SHARED:
        return 0
    return 0 if vma_wants_writenotify(vma) else _PAGE_RW


# handle_mm_fault: resolve one fault at `address` of `vma`; `flags` has
# FAULT_FLAG_WRITE for a store. Returns a vm_fault_t: 0 when the pte now
# allows the access, VM_FAULT_NOPAGE when a handler installed (or tore down)
# the pte itself and the access must be retried, an error bit otherwise. The
# access check (a store to a vma without VM_WRITE) is the arch fault
# handler's, done here first.
def handle_mm_fault(vma: VMA, address: int, flags: int) -> int:
    if not _check_range(vma, address):
        return VM_FAULT_SIGSEGV
    if flags & FAULT_FLAG_WRITE:
        if not vma.vm_flags & VM_WRITE:
            return VM_FAULT_SIGSEGV
    elif not vma.vm_flags & VM_READ:
        return VM_FAULT_SIGSEGV
    return handle_pte_fault(VMFault(vma, address, flags))


# handle_pte_fault: no pte -> do_fault; a store to a read-only pte ->
# do_wp_page; otherwise the access just sets young (and dirty for a store).
def handle_pte_fault(vmf: VMFault) -> int:
    vma = vmf.vma
    chunk, slot = vma.vm_mm.get_locked_pte(vmf.address)
    vmf.chunk, vmf.slot = chunk, slot
    pte = chunk.pte[slot]
    vmf.orig_pte = pte
    if not pte & _PAGE_PRESENT:
        if vma.vm_ops is None:
            # do_anonymous_page: anonymous vmas are not modelled.
            return VM_FAULT_SIGBUS
        return do_fault(vmf)
    entry = pte | _PAGE_ACCESSED
    if vmf.flags & FAULT_FLAG_WRITE:
        if not pte & _PAGE_RW:
            return do_wp_page(vmf)
        entry |= _PAGE_DIRTY
    chunk.pte[slot] = entry
    return 0


# do_fault: a pte_none fault in a file vma. A load -> do_read_fault; a store
# to a private mapping -> do_cow_fault; a store to a shared one ->
# do_shared_fault. No ->fault handler: SIGBUS.
def do_fault(vmf: VMFault) -> int:
    ops = vmf.vma.vm_ops
    if ops is None or ops.fault is None:
        return VM_FAULT_SIGBUS
    if not vmf.flags & FAULT_FLAG_WRITE:
        return do_read_fault(vmf)
    if not vmf.vma.vm_flags & VM_SHARED:
        return do_cow_fault(vmf)
    return do_shared_fault(vmf)


# __do_fault: call ->fault. It either sets vmf.page to a page it holds a
# reference on (and returns VM_FAULT_LOCKED if it locked it; else the page
# is locked here), or installs the pte itself and returns VM_FAULT_NOPAGE.
def __do_fault(vmf: VMFault) -> int:  # noqa: N807 (kernel name)
    ops = vmf.vma.vm_ops
    assert ops is not None and ops.fault is not None
    ret = ops.fault(vmf)
    if ret & (VM_FAULT_ERROR | VM_FAULT_NOPAGE | VM_FAULT_RETRY):
        return ret
    BUG_ON(vmf.page is None, "->fault returned no page and no VM_FAULT_NOPAGE")
    if not ret & VM_FAULT_LOCKED:
        lock_page(_machine(vmf.vma), vmf.page)
    return ret


# finish_fault: install the pte for the page the fault produced: the COW
# copy for a store to a private mapping (a new anonymous page), else the
# page ->fault returned (a file page: its reference becomes the pte's).
# A store makes the pte writable and dirty. VM_FAULT_NOPAGE if a pte
# appeared meanwhile.
def finish_fault(vmf: VMFault) -> int:
    vma = vmf.vma
    m = vma.vm_mm.machine
    write = bool(vmf.flags & FAULT_FLAG_WRITE)
    cow = write and not vma.vm_flags & VM_SHARED
    page = vmf.cow_page if cow else vmf.page
    assert page is not None
    chunk, slot = vmf.chunk, vmf.slot
    if chunk.pte[slot] & _PAGE_PRESENT:
        return VM_FAULT_NOPAGE
    entry = (page << PTE_PFN_SHIFT) | _PAGE_PRESENT | _PAGE_ACCESSED
    if write:
        entry |= _PAGE_DIRTY
        if vma.vm_flags & VM_WRITE:
            entry |= _PAGE_RW
    if cow:
        vma.vm_mm.rss_anon += 1
        page_add_new_anon_rmap(m, page, vmf.pgoff)
    else:
        vma.vm_mm.rss_file += 1
        page_add_file_rmap(m, page)
    chunk.pte[slot] = entry
    return 0


# do_read_fault: a load from an unmapped page: ->fault, then map the page.
def do_read_fault(vmf: VMFault) -> int:
    m = _machine(vmf.vma)
    ret = __do_fault(vmf)
    if ret & (VM_FAULT_ERROR | VM_FAULT_NOPAGE | VM_FAULT_RETRY):
        return ret
    assert vmf.page is not None
    ret |= finish_fault(vmf)
    unlock_page(m, vmf.page)
    if ret & (VM_FAULT_ERROR | VM_FAULT_NOPAGE | VM_FAULT_RETRY):
        m.put_page(vmf.page)
    return ret


# do_cow_fault: a store to an unmapped page of a private mapping: allocate
# the copy first, get the file page from ->fault, copy it, map the copy
# (a new anonymous page, writable). The file page is only read. If ->fault
# installed the pte itself (a raw pfn, the zero page), the copy is dropped
# and the retried store COWs through do_wp_page.
def do_cow_fault(vmf: VMFault) -> int:
    vma = vmf.vma
    m = vma.vm_mm.machine
    cow_page = m.alloc_page()
    if cow_page is None:
        return VM_FAULT_OOM
    vmf.cow_page = cow_page
    ret = __do_fault(vmf)
    if ret & (VM_FAULT_ERROR | VM_FAULT_NOPAGE | VM_FAULT_RETRY):
        m.put_page(cow_page)
        return ret
    page = vmf.page
    assert page is not None
    m.data[cow_page] = m.data[page]
    ret |= finish_fault(vmf)
    unlock_page(m, page)
    m.put_page(page)
    if ret & (VM_FAULT_ERROR | VM_FAULT_NOPAGE | VM_FAULT_RETRY):
        m.put_page(cow_page)
        return ret
    m.fault_kinds |= FK_COW
    log_page_event(
        m,
        schema.COW,
        vma,
        vmf.pgoff,
        page,
        cow_page,
        schema.PAGECACHE,
        schema.ANON,
        schema.REASON_WRITE,
        cow_page,
        via=schema.VIA_DO_COW_FAULT,
    )
    return ret


# do_shared_fault: a store to an unmapped page of a shared mapping: get the
# page from ->fault, let the filesystem know it will be written
# (->page_mkwrite), map it writable and dirty, mark the page dirty.
def do_shared_fault(vmf: VMFault) -> int:
    vma = vmf.vma
    m = vma.vm_mm.machine
    ret = __do_fault(vmf)
    if ret & (VM_FAULT_ERROR | VM_FAULT_NOPAGE | VM_FAULT_RETRY):
        return ret
    page = vmf.page
    assert page is not None
    if vma.vm_ops is not None and vma.vm_ops.page_mkwrite is not None:
        unlock_page(m, page)
        tmp = do_page_mkwrite(vmf)
        if not tmp or tmp & (VM_FAULT_ERROR | VM_FAULT_NOPAGE | VM_FAULT_RETRY):
            m.put_page(page)
            return tmp
    ret |= finish_fault(vmf)
    if ret & (VM_FAULT_ERROR | VM_FAULT_NOPAGE | VM_FAULT_RETRY):
        unlock_page(m, page)
        m.put_page(page)
        return ret
    fault_dirty_shared_page(vmf)
    return ret


# do_page_mkwrite: tell the filesystem a read-only page is about to become
# writable (->page_mkwrite, called with FAULT_FLAG_WRITE|FAULT_FLAG_MKWRITE;
# the caller's fault flags are restored after). Returns with the page
# locked (VM_FAULT_LOCKED); the handler's VM_FAULT_NOPAGE or error as is;
# or 0, with the page unlocked, when the page was truncated meanwhile: the
# caller drops its reference and returns 0, and the access faults again.
def do_page_mkwrite(vmf: VMFault) -> int:
    vma = vmf.vma
    m = vma.vm_mm.machine
    page = vmf.page
    assert page is not None and vma.vm_ops is not None and vma.vm_ops.page_mkwrite is not None
    old_flags = vmf.flags
    vmf.flags = FAULT_FLAG_WRITE | FAULT_FLAG_MKWRITE
    ret = vma.vm_ops.page_mkwrite(vmf)
    vmf.flags = old_flags
    if ret & (VM_FAULT_ERROR | VM_FAULT_NOPAGE):
        return ret
    if not ret & VM_FAULT_LOCKED:
        lock_page(m, page)
        if m.mapping[page] == 0:
            unlock_page(m, page)
            return 0
        ret |= VM_FAULT_LOCKED
    else:
        VM_BUG_ON_PAGE(not m.flags[page] & PG_LOCKED, m, page, "page_mkwrite: page not locked")
    return ret


# fault_dirty_shared_page: a store made a shared file page writable: the
# page is dirty now (writeback will clean it and write-protect its ptes).
def fault_dirty_shared_page(vmf: VMFault) -> None:
    m = _machine(vmf.vma)
    page = vmf.page
    assert page is not None
    set_page_dirty(m, page)
    unlock_page(m, page)


# do_wp_page: a store to a present, read-only pte.
#   Shared mapping (VM_SHARED|VM_MAYSHARE): never COW. No struct page
#     (vm_normal_page is None: a raw pfn of a PFNMAP/MIXEDMAP vma) ->
#     wp_pfn_shared (->pfn_mkwrite, no copy by the core VM); a page ->
#     wp_page_shared (->page_mkwrite, then reuse).
#   Private mapping: an anonymous page only this pte holds is reused in
#     place (wp_page_reuse); anything else (a file page, the zero page, a
#     raw pfn) is copied into a new anonymous page (wp_page_copy) and the
#     source is left untouched.
# The 2008 kernels differ on a raw pfn (vm_normal_page NULL): 2.6.26-rc1
# goes to `gotten:` and copies it into an anonymous page whatever the
# mapping, shared or not; 2.6.26 makes it writable in place in a shared
# writable mapping (`goto reuse`: no dirty accounting on raw pfns) and
# copies it in any other. Neither has ->pfn_mkwrite.
def do_wp_page(vmf: VMFault) -> int:
    vma = vmf.vma
    m = vma.vm_mm.machine
    vmf.page = vm_normal_page(vma, vmf.address, vmf.orig_pte)
    if not m.modern and vmf.page is None:
        if m.kernel == KERNEL_2626 and vma.vm_flags & (VM_WRITE | VM_SHARED) == (
            VM_WRITE | VM_SHARED
        ):
            wp_page_reuse(vmf)
            return 0
        return wp_page_copy(vmf)
    if vma.vm_flags & (VM_SHARED | VM_MAYSHARE):
        if vmf.page is None:
            return wp_pfn_shared(vmf)
        return wp_page_shared(vmf)
    page = vmf.page
    if page is not None and m.flags[page] & PG_ANON and m._refcount[page] == 1:
        wp_page_reuse(vmf)
        return 0
    if page is not None:
        m.get_page(page)
    return wp_page_copy(vmf)


# wp_pfn_shared: a store to a raw pfn in a shared mapping. With
# ->pfn_mkwrite the filesystem decides (it may make the pfn writable, or
# tear the pte down and return VM_FAULT_NOPAGE to have the store retried);
# then, if the pte is unchanged, it is made writable. Without it the pte is
# simply made writable.
def wp_pfn_shared(vmf: VMFault) -> int:
    ops = vmf.vma.vm_ops
    if ops is not None and ops.pfn_mkwrite is not None:
        vmf.flags |= FAULT_FLAG_MKWRITE
        ret = ops.pfn_mkwrite(vmf)
        if ret & (VM_FAULT_ERROR | VM_FAULT_NOPAGE):
            return ret
        return finish_mkwrite_fault(vmf)
    wp_page_reuse(vmf)
    return 0


# wp_page_shared: a store to a read-only page of a shared mapping (a clean
# page cache page: writeback write-protected it). ->page_mkwrite lets the
# filesystem prepare; then the pte is reused writable and the page dirtied.
def wp_page_shared(vmf: VMFault) -> int:
    vma = vmf.vma
    m = vma.vm_mm.machine
    page = vmf.page
    assert page is not None
    m.get_page(page)
    if vma.vm_ops is not None and vma.vm_ops.page_mkwrite is not None:
        tmp = do_page_mkwrite(vmf)
        if not tmp or tmp & (VM_FAULT_ERROR | VM_FAULT_NOPAGE):
            m.put_page(page)
            return tmp
        tmp = finish_mkwrite_fault(vmf)
        if tmp & (VM_FAULT_ERROR | VM_FAULT_NOPAGE):
            unlock_page(m, page)
            m.put_page(page)
            return tmp
    else:
        wp_page_reuse(vmf)
        lock_page(m, page)
    fault_dirty_shared_page(vmf)
    m.put_page(page)
    return 0


# finish_mkwrite_fault: after ->page_mkwrite / ->pfn_mkwrite, make the pte
# writable, unless it changed meanwhile (then VM_FAULT_NOPAGE: retry).
def finish_mkwrite_fault(vmf: VMFault) -> int:
    if vmf.chunk.pte[vmf.slot] != vmf.orig_pte:
        return VM_FAULT_NOPAGE
    wp_page_reuse(vmf)
    return 0


# wp_page_reuse: the store may use the mapped page in place: set young,
# dirty and (if the vma allows) writable.
def wp_page_reuse(vmf: VMFault) -> None:
    entry = vmf.orig_pte | _PAGE_ACCESSED | _PAGE_DIRTY
    if vmf.vma.vm_flags & VM_WRITE:
        entry |= _PAGE_RW
    vmf.chunk.pte[vmf.slot] = entry
    _machine(vmf.vma).fault_kinds |= FK_WRITE_REUSE


# wp_page_copy: copy-on-write into a new anonymous page. The source is the
# old page (vmf.page, on which do_wp_page took a reference), or, when it has
# no struct page, the pfn's memory; the zero page gives a zeroed page. If
# the pte is still the one that faulted, it is replaced by a writable, dirty
# pte of the copy and the old page loses the pte's mapcount and reference;
# otherwise the copy is dropped (the store is retried). The source is never
# written.
def wp_page_copy(vmf: VMFault) -> int:
    vma = vmf.vma
    m = vma.vm_mm.machine
    old_page = vmf.page
    src_pfn = pte_pfn(vmf.orig_pte)
    new_page = m.alloc_page()
    if new_page is None:
        if old_page is not None:
            m.put_page(old_page)
        return VM_FAULT_OOM
    if src_pfn == ZERO_PFN:
        m.data[new_page] = 0
        home = schema.ZERO
    elif m.pfn_valid(src_pfn):
        m.data[new_page] = m.data[src_pfn]
        home = schema.ANON if m.flags[src_pfn] & PG_ANON else schema.PAGECACHE
    else:
        m.data[new_page] = np.frombuffer(_nvram_page(m, src_pfn - m.nvram_base_pfn), dtype=np.uint8)
        home = schema.XIP
    chunk, slot = vmf.chunk, vmf.slot
    if chunk.pte[slot] == vmf.orig_pte:
        entry = (new_page << PTE_PFN_SHIFT) | _PAGE_PRESENT | _PAGE_ACCESSED | _PAGE_DIRTY
        if vma.vm_flags & VM_WRITE:
            entry |= _PAGE_RW
        if old_page is not None and not m.flags[old_page] & PG_ANON:
            vma.vm_mm.rss_file -= 1
        vma.vm_mm.rss_anon += 1
        page_add_new_anon_rmap(m, new_page, vmf.pgoff)
        chunk.pte[slot] = entry
        if old_page is None and vma.fs_owned and src_pfn >= m.nvram_base_pfn:
            m.stats.xip_mapped -= 1
        if old_page is not None:
            page_remove_rmap(m, old_page)
        m.fault_kinds |= FK_COW
        log_page_event(
            m,
            schema.COW,
            vma,
            vmf.pgoff,
            src_pfn,
            new_page,
            home,
            schema.ANON,
            schema.REASON_WRITE,
            new_page,
            via=schema.VIA_WP_PAGE_COPY,
        )
        # The pte's reference on the old page goes with the pte.
        new_page = old_page
    if new_page is not None:
        m.put_page(new_page)
    if old_page is not None:
        m.put_page(old_page)
    return 0


def _nvram_page(m: Machine, block: int) -> memoryview:
    BUG_ON(m.nvram_view is None, "no NVRAM backing attached to the machine")
    assert m.nvram_view is not None
    return m.nvram_view(block)


def log_page_event(
    m: Machine,
    ev: str,
    vma_or_mapping: VMA | AddressSpace,
    index: int,
    pfn_from: int,
    pfn_to: int,
    home_from: str,
    home_to: str,
    reason: str,
    page: int,
    **extra: object,
) -> None:
    """Emit a migrate/cow/writeback event; `page` is the frame whose counts are reported."""
    if isinstance(vma_or_mapping, VMA):
        ino = vma_or_mapping.vm_file.host if vma_or_mapping.vm_file is not None else 0
    else:
        ino = vma_or_mapping.host
    m.events.emit(
        ev,
        ino=int(ino),
        index=int(index),
        pfn_from=int(pfn_from),
        pfn_to=int(pfn_to),
        **{"from": home_from, "to": home_to},
        reason=reason,
        refcount=int(m._refcount[page]),
        mapcount=int(m._mapcount[page]) + 1,
        **extra,
    )


# zap_pte: tear down one present pte. A page behind it (vm_normal_page)
# loses the pte's mapcount and reference, and inherits the pte's dirty bit
# (set_page_dirty) and young bit (PG_referenced). In the filesystem's own
# vma the pte keeps, as a not-present bmap hint, where the page lives on
# NVRAM (or that it is a hole) when that is known.
def zap_pte(vma: VMA, chunk: Chunk, slot: int) -> None:
    m = vma.vm_mm.machine
    pte = chunk.pte[slot]
    if not pte & _PAGE_PRESENT:
        return
    addr = (chunk.first_vpn + slot) << PAGE_SHIFT
    pfn = pte >> PTE_PFN_SHIFT
    page = vm_normal_page(vma, addr, pte)
    hint = 0
    if vma.fs_owned:
        if pfn == ZERO_PFN:
            hint = _PAGE_BMAP
        elif pfn >= m.nvram_base_pfn:
            hint = (pfn << PTE_PFN_SHIFT) | _PAGE_BMAP
        elif page is not None and not m.flags[page] & PG_ANON:
            block = int(m.page_block[page])
            if block:
                hint = ((m.nvram_base_pfn + block) << PTE_PFN_SHIFT) | _PAGE_BMAP
    chunk.pte[slot] = hint
    if page is None:
        if vma.fs_owned and pfn >= m.nvram_base_pfn:
            m.stats.xip_mapped -= 1
        return
    anon = m.flags[page] & PG_ANON
    if pte & _PAGE_DIRTY and not anon:
        set_page_dirty(m, page)
    if pte & _PAGE_ACCESSED:
        m.flags[page] = int(m.flags[page]) | PG_REFERENCED
    if anon:
        vma.vm_mm.rss_anon -= 1
    else:
        vma.vm_mm.rss_file -= 1
    page_remove_rmap(m, page)
    m.put_page(page)


# zap_page_range_single-ish: tear down the present ptes of pages
# [first_vpn, last_vpn] of `vma`; with `even_cows` False the private COWed
# (anonymous) pages are kept. Walks only the page-table chunks that exist.
def zap_vma_range(vma: VMA, first_vpn: int, last_vpn: int, even_cows: bool) -> None:
    m = vma.vm_mm.machine
    pgd = vma.vm_mm.pgd
    c0, c1 = first_vpn >> PTE_SHIFT, last_vpn >> PTE_SHIFT
    if first_vpn == last_vpn:
        # One page (promote, demote, COW, readpage): no array work.
        chunk = pgd.get(c0)
        if chunk is None:
            return
        slot = first_vpn & PTE_INDEX_MASK
        pte = chunk.pte[slot]
        if not pte & _PAGE_PRESENT:
            return
        if not even_cows:
            pfn = pte >> PTE_PFN_SHIFT
            if m.pfn_valid(pfn) and m.flags[pfn] & PG_ANON:
                if vm_normal_page(vma, first_vpn << PAGE_SHIFT, pte) is not None:
                    return
        zap_pte(vma, chunk, slot)
        return
    if c1 - c0 + 1 <= len(pgd):
        nos = [c for c in range(c0, c1 + 1) if c in pgd]
    else:
        nos = sorted(c for c in pgd if c0 <= c <= c1)
    for no in nos:
        chunk = pgd[no]
        lo = first_vpn - (no << PTE_SHIFT) if no == c0 else 0
        hi = last_vpn - (no << PTE_SHIFT) + 1 if no == c1 else PTRS_PER_PTE
        present = np.flatnonzero(chunk.pte_np[lo:hi] & _PAGE_PRESENT)
        for s in present.tolist():
            slot = lo + s
            if not even_cows:
                pte = chunk.pte[slot]
                pfn = pte >> PTE_PFN_SHIFT
                if m.pfn_valid(pfn) and m.flags[pfn] & PG_ANON:
                    addr = (chunk.first_vpn + slot) << PAGE_SHIFT
                    if vm_normal_page(vma, addr, pte) is not None:
                        continue
            zap_pte(vma, chunk, slot)


# unmap_mapping_pages: tear down every pte, in every vma that maps the file
# `mapping`, of file pages [start, start + nr) (nr 0: to the end of the
# file). With `even_cows` False the private COWed copies stay (invalidation
# of the file's pages); with True they go too (truncation). This is the only
# way to find the ptes of a pfn with no struct page: it has no reverse map.
def unmap_mapping_pages(mapping: AddressSpace, start: int, nr: int, even_cows: bool) -> None:
    last = (1 << 62) if nr == 0 else start + nr - 1
    for vma in list(mapping.i_mmap):
        vfirst = vma.vm_pgoff
        vlast = vma.vm_pgoff + vma.nr_pages - 1
        lo, hi = max(start, vfirst), min(last, vlast)
        if lo > hi:
            continue
        base = vma.vm_start >> PAGE_SHIFT
        zap_vma_range(vma, base + lo - vfirst, base + hi - vfirst, even_cows)


# unmap_mapping_range: unmap_mapping_pages in bytes, rounded as Linux
# rounds them: the first page is the one holding `holebegin` (rounded
# down), and the page count is `holelen` rounded up on its own
# (hba = holebegin >> PAGE_SHIFT, hlen = (holelen + PAGE_SIZE - 1) >>
# PAGE_SHIFT), not the end rounded up: (PAGE + 1, 2 * PAGE) unmaps pages 1
# and 2. A `holelen` of 0 means to the end of the file.
def unmap_mapping_range(
    mapping: AddressSpace, holebegin: int, holelen: int, even_cows: bool
) -> None:
    hba = holebegin >> PAGE_SHIFT
    hlen = (holelen + PAGE_SIZE - 1) >> PAGE_SHIFT
    unmap_mapping_pages(mapping, hba, hlen, even_cows)


def pte_index(vpn: int) -> tuple[int, int]:
    """(chunk number, slot) of a virtual page number."""
    return vpn >> PTE_SHIFT, vpn & PTE_INDEX_MASK
