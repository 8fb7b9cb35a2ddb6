"""The simulated kernel VM: machine, vmas, faults, COW, page cache, migration, policies.

Never imports nvramfs.image or nvramfs.fuse: page data comes through `Backing`.
"""

from .backing import Backing, MemBacking
from .bug import BUG_ON, VM_BUG_ON_PAGE, MMBug
from .filemap import (
    AddressSpace,
    add_to_page_cache,
    delete_from_page_cache,
    find_get_page,
    page_mkclean,
    write_cache_pages,
    xip_file_fault,
    xip_file_vm_ops,
    xip_page_mkwrite,
    xip_pfn_mkwrite,
)
from .flags import is_cow_mapping
from .machine import ZERO_PFN, Machine
from .manager import MemoryManager
from .memory import (
    do_wp_page,
    finish_mkwrite_fault,
    handle_mm_fault,
    unmap_mapping_pages,
    unmap_mapping_range,
    vm_insert_mixed,
    vm_insert_pfn,
    vm_normal_page,
    wp_page_copy,
    wp_page_reuse,
    wp_page_shared,
    wp_pfn_shared,
)
from .migrate import demote, promote
from .policy import POLICIES, Policy, make_policy
from .vma import VMA, MMStruct, VMOperations

__all__ = [
    "BUG_ON",
    "POLICIES",
    "VMA",
    "VM_BUG_ON_PAGE",
    "ZERO_PFN",
    "AddressSpace",
    "Backing",
    "MMBug",
    "MMStruct",
    "Machine",
    "MemBacking",
    "MemoryManager",
    "Policy",
    "VMOperations",
    "add_to_page_cache",
    "delete_from_page_cache",
    "demote",
    "do_wp_page",
    "find_get_page",
    "finish_mkwrite_fault",
    "handle_mm_fault",
    "is_cow_mapping",
    "make_policy",
    "page_mkclean",
    "promote",
    "unmap_mapping_pages",
    "unmap_mapping_range",
    "vm_insert_mixed",
    "vm_insert_pfn",
    "vm_normal_page",
    "wp_page_copy",
    "wp_page_reuse",
    "wp_page_shared",
    "wp_pfn_shared",
    "write_cache_pages",
    "xip_file_fault",
    "xip_file_vm_ops",
    "xip_page_mkwrite",
    "xip_pfn_mkwrite",
]
