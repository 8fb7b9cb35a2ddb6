"""Names of the event log's schema (docs/EVENTS.md): the one place they are spelled."""

SCHEMA_VERSION = 1

# Event types.
MOUNT = "mount"
PATH = "path"
MIGRATE = "migrate"
COW = "cow"
WRITEBACK = "writeback"
COUNTERS = "counters"
ACCESS = "access"
FAULT = "fault"
ERROR = "error"
UNMOUNT = "unmount"

EVENT_TYPES = (MOUNT, PATH, MIGRATE, COW, WRITEBACK, COUNTERS, ACCESS, FAULT, ERROR, UNMOUNT)

# Homes of a page.
XIP = "xip"
PAGECACHE = "pagecache"
ANON = "anon"
ZERO = "zero"

# Reasons.
REASON_POLICY = "policy"
REASON_DRAM_BUDGET = "dram_budget"
REASON_CTL = "ctl"
REASON_UNMOUNT = "unmount"
REASON_WRITE = "write"
REASON_FSYNC = "fsync"
REASON_DEMOTE = "demote"
REASON_DIRTY_EXPIRE = "dirty_expire"
REASON_SYNC = "sync"
# A page read into a frame on demand (lru, opt, opt-nox) or pinned (static).
REASON_READPAGE = "readpage"

# COW paths.
VIA_PFN_MKWRITE = "pfn_mkwrite"
VIA_WP_PAGE_COPY = "wp_page_copy"
# A store to an unmapped page cache page through a private vma (tests and
# trace replays only): copied into an anonymous page before it is mapped.
VIA_DO_COW_FAULT = "do_cow_fault"

# Fault kinds (keys of counters.faults).
FAULT_KINDS = ("xip_read", "pagecache_hit", "cow", "write_reuse", "hole", "readpage")
