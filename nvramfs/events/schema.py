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
CTL = "ctl"  # a command to .nvramfs/ctl and its answer
POLICY = "policy"  # the migration policy switched (ctl or remount)
# A phase starts (`mark NAME` written to .nvramfs/ctl; the demo between phases).
MARK = "mark"
# The device model's wear and write amplification at the end of a session.
WEAR = "wear"
# Page-cache pages (and XIP ptes) dropped unwritten: truncate, O_TRUNC, evict.
DROP = "drop"
# Bytes of a page zeroed in place (the tail of the last page on truncate).
ZERO_EV = "zero"
# A store written straight into NVRAM (kernel=2.6.26: a raw pfn made writable).
XIP_WRITE = "xip_write"

EVENT_TYPES = (
    MOUNT,
    PATH,
    MIGRATE,
    COW,
    WRITEBACK,
    COUNTERS,
    ACCESS,
    FAULT,
    ERROR,
    UNMOUNT,
    DROP,
    ZERO_EV,
    XIP_WRITE,
    CTL,
    POLICY,
    WEAR,
    MARK,
)

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
REASON_REMOUNT = "remount"
# A page read into a frame on demand (lru, opt, opt-nox) or pinned (static).
REASON_READPAGE = "readpage"
REASON_TRUNCATE = "truncate"
REASON_O_TRUNC = "o_trunc"
REASON_EVICT = "evict"

# COW paths.
VIA_PFN_MKWRITE = "pfn_mkwrite"
VIA_WP_PAGE_COPY = "wp_page_copy"
# A store to an unmapped page cache page through a private vma (tests and
# trace replays only): copied into an anonymous page before it is mapped.
VIA_DO_COW_FAULT = "do_cow_fault"
# kernel=2.6.26: do_wp_page made a raw pfn of a shared mapping writable in
# place (the store reached NVRAM, as __xip_file_write did for write(2)).
VIA_XIP_FILE_WRITE = "__xip_file_write"

# Fault kinds (keys of counters.faults).
FAULT_KINDS = ("xip_read", "pagecache_hit", "cow", "write_reuse", "hole", "readpage")
