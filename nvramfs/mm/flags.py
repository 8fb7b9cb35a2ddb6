"""vm_flags, pte bits and the page-size constants, with the kernel's names and values."""

from __future__ import annotations

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PAGE_MASK = ~(PAGE_SIZE - 1)

# vm_area_struct.vm_flags (include/linux/mm.h).
VM_NONE = 0x00000000
VM_READ = 0x00000001
VM_WRITE = 0x00000002
VM_EXEC = 0x00000004
VM_SHARED = 0x00000008
VM_MAYREAD = 0x00000010
VM_MAYWRITE = 0x00000020
VM_MAYEXEC = 0x00000040
VM_MAYSHARE = 0x00000080
VM_PFNMAP = 0x00000400
VM_MIXEDMAP = 0x10000000


# is_cow_mapping: a mapping is copy-on-write when it may be written but is not
# shared: a store must then never reach the object behind it, only a private
# copy. (A read-only private mapping is still a COW mapping: mprotect could
# make it writable.)
def is_cow_mapping(flags: int) -> bool:
    return (flags & (VM_SHARED | VM_MAYWRITE)) == VM_MAYWRITE


# pte bits (x86 layout where it has them). A pte is one int64: the pfn above
# PTE_PFN_SHIFT, the bits below.
_PAGE_PRESENT = 1 << 0
_PAGE_RW = 1 << 1
_PAGE_ACCESSED = 1 << 5  # the "young" bit
_PAGE_DIRTY = 1 << 6
_PAGE_SPECIAL = 1 << 9  # pte_special: no struct page to refcount behind it
# Software bit of this simulation, only in a pte that is not present (so the
# pte is still pte_none to the VM): the pfn field caches what the
# filesystem's bmap said about the page (an NVRAM pfn, or 0 for a hole), so a
# later fault does not ask the filesystem again. Like a swap entry, it is
# meaningful only to the code that wrote it (the filesystem's own vma).
_PAGE_BMAP = 1 << 10

PTE_PFN_SHIFT = 12
PTE_FLAGS_MASK = (1 << PTE_PFN_SHIFT) - 1


def pte_present(pte: int) -> bool:
    return bool(pte & _PAGE_PRESENT)


def pte_none(pte: int) -> bool:
    """No translation: not present (a cached bmap hint does not count)."""
    return not pte & _PAGE_PRESENT


def pte_write(pte: int) -> bool:
    return bool(pte & _PAGE_RW)


def pte_dirty(pte: int) -> bool:
    return bool(pte & _PAGE_DIRTY)


def pte_young(pte: int) -> bool:
    return bool(pte & _PAGE_ACCESSED)


def pte_special(pte: int) -> bool:
    return bool(pte & _PAGE_SPECIAL)


def pte_pfn(pte: int) -> int:
    return pte >> PTE_PFN_SHIFT


def pfn_pte(pfn: int, bits: int) -> int:
    return (pfn << PTE_PFN_SHIFT) | bits


def pte_mkyoung(pte: int) -> int:
    return pte | _PAGE_ACCESSED


def pte_mkdirty(pte: int) -> int:
    return pte | _PAGE_DIRTY


def pte_mkwrite(pte: int) -> int:
    return pte | _PAGE_RW


def pte_wrprotect(pte: int) -> int:
    return pte & ~_PAGE_RW


def pte_mkclean(pte: int) -> int:
    return pte & ~_PAGE_DIRTY


def pte_mkold(pte: int) -> int:
    return pte & ~_PAGE_ACCESSED


# vm_fault_t (include/linux/mm_types.h).
VM_FAULT_OOM = 0x000001
VM_FAULT_SIGBUS = 0x000002
VM_FAULT_MAJOR = 0x000004
VM_FAULT_SIGSEGV = 0x000040
VM_FAULT_NOPAGE = 0x000100
VM_FAULT_LOCKED = 0x000200
VM_FAULT_RETRY = 0x000400
VM_FAULT_ERROR = VM_FAULT_OOM | VM_FAULT_SIGBUS | VM_FAULT_SIGSEGV

# fault flags.
FAULT_FLAG_WRITE = 0x01
FAULT_FLAG_MKWRITE = 0x02

# errno values vm_insert_* return (negated, as the kernel does).
EFAULT = 14
EBUSY = 16
ENOMEM = 12
