"""The redo journal: the one crash-consistent update primitive.

A transaction is a set of whole 4 KiB metadata block images (the superblock
always among them: it carries the generation and the free counts). Commit:

1. store the header (sequence number, home block list, a BLAKE2b-64 sum over
   header, list and every image) and the images into the journal area; flush;
   fence. The transaction is now committed: the sum is the commit record, so a
   torn journal write is an uncommitted transaction and is ignored.
2. store every image at its home block except the superblock; flush; fence.
3. store superblock copy A; flush; fence. Then copy B; flush; fence.

The superblock goes last, so `superblock.generation == header.seq` means the
checkpoint is complete. Recovery replays the journal when its seq is newer than
the best superblock copy; replay is idempotent (the journal holds only the last
transaction, and the next one starts only after this one's checkpoint).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from nvramfs.image import format as F
from nvramfs.image.persist import Persist

BS = F.BLOCK_SIZE


def max_txn_blocks(journal_blocks: int) -> int:
    return min(F.JOURNAL_MAX_TXN, journal_blocks - 1)


def encode(seq: int, blocks: Mapping[int, bytes | bytearray]) -> bytes:
    """The journal area's bytes for one transaction: header + images, home order."""
    homes = sorted(blocks)
    hdr = bytearray(BS)
    hdr[0:4] = F.KIND_JOURNAL.to_bytes(4, "little")
    hdr[8:16] = seq.to_bytes(8, "little")
    hdr[16:20] = len(homes).to_bytes(4, "little")
    for i, b in enumerate(homes):
        off = F.JH_LIST_OFF + 8 * i
        hdr[off : off + 8] = b.to_bytes(8, "little")
    body = b"".join(bytes(blocks[b]) for b in homes)
    hdr[24:32] = commit_sum(hdr, body)
    return bytes(hdr) + body


def commit_sum(hdr: bytes | bytearray | memoryview, body: bytes | memoryview) -> bytes:
    """The commit record: BLAKE2b-64 of the header (less this field), list and images.

    Not crc32: every image ends in its own crc32, and a crc32 over a message
    that contains a record followed by that record's crc32 does not depend on
    the record (crc is linear; M + crc(M) has a constant residue), so a torn
    journal of old and new images could pass a crc32 commit check.
    """
    h = hashlib.blake2b(digest_size=8)
    h.update(hdr[0:24])
    h.update(hdr[F.JH_LIST_OFF : BS])
    h.update(body)
    return h.digest()


def decode(area: memoryview, max_blocks: int) -> tuple[int, dict[int, bytes]] | None:
    """(seq, {home: image}) of a committed transaction in the journal area, else None."""
    if len(area) < BS:
        return None
    hdr = area[:BS]
    if int.from_bytes(hdr[0:4], "little") != F.KIND_JOURNAL:
        return None
    n = int.from_bytes(hdr[16:20], "little")
    if not 0 < n <= max_blocks or len(area) < BS * (n + 1):
        return None
    seq = int.from_bytes(hdr[8:16], "little")
    if commit_sum(hdr, area[BS : BS * (n + 1)]) != bytes(hdr[24:32]):
        return None
    out = {}
    for i in range(n):
        off = F.JH_LIST_OFF + 8 * i
        home = int.from_bytes(hdr[off : off + 8], "little")
        out[home] = bytes(area[BS * (i + 1) : BS * (i + 2)])
    return seq, out


def commit(
    persist: Persist, journal_start: int, seq: int, blocks: Mapping[int, bytes | bytearray]
) -> None:
    """Make `blocks` durable atomically (the protocol in the module docstring)."""
    jbytes = encode(seq, blocks)
    joff = journal_start * BS
    persist.store(joff, jbytes)
    persist.flush(joff, len(jbytes))
    persist.fence()
    checkpoint(persist, blocks)


def checkpoint(persist: Persist, blocks: Mapping[int, bytes | bytearray]) -> None:
    """Write committed images home; superblock copies last, one at a time."""
    homes = sorted(b for b in blocks if b > 1)
    # Coalesce adjacent homes into one store + flush each.
    i = 0
    while i < len(homes):
        j = i
        while j + 1 < len(homes) and homes[j + 1] == homes[j] + 1:
            j += 1
        data = b"".join(bytes(blocks[b]) for b in homes[i : j + 1])
        persist.store(homes[i] * BS, data)
        persist.flush(homes[i] * BS, len(data))
        i = j + 1
    if homes:
        persist.fence()
    for sb in (0, 1):
        if sb in blocks:
            persist.store(sb * BS, blocks[sb])
            persist.flush(sb * BS, BS)
            persist.fence()
