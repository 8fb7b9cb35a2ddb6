"""Make an image: empty of a given size, or from a directory tree.

The image is built in a temporary file beside the target (sparse: ftruncate,
then the fixed metadata regions are allocated on the host and only metadata
and data blocks are written; `preallocate` allocates the whole file), populated through the
ordinary `Image` API in bulk mode (no per-transaction flushes; one msync at
the end), closed cleanly with a journaled transaction, and renamed into place,
so a failed mkfs never leaves a half-made image under the target's name.
"""

from __future__ import annotations

import errno
import os
import stat
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nvramfs.errors import NvramfsError
from nvramfs.image import format as F
from nvramfs.image.errors import FsError, HostFull
from nvramfs.image.hostspace import human as _hsize
from nvramfs.image.hostspace import preallocate as _preallocate
from nvramfs.image.image import Image
from nvramfs.image.lock import ImageInUse, lock_fd, lock_image, unlock_image
from nvramfs.image.persist import Persist
from nvramfs.units import format_bytes, parse_size  # noqa: F401 (parse_size: re-exported)

BS = F.BLOCK_SIZE
MIB = 1 << 20
BYTES_PER_INODE = 16 * 1024
MIN_INODES = 1024
GROW_MIN = 64 * MIB  # default size: the tree's need + max(need, 64 MiB)
RESERVED_NAME = b".nvramfs"
CHUNK_PAGES = 2048  # 8 MiB read per write_pages call

Progress = Callable[[int, int], None]


@dataclass
class Node:
    rel: str  # path relative to the source root ("" for the root)
    st: os.stat_result
    children: list[str] = field(default_factory=list)


@dataclass
class Scan:
    """What a tree holds, gathered before anything is written."""

    root: Path
    nodes: list[Node] = field(default_factory=list)  # parents before children
    skipped: list[str] = field(default_factory=list)
    data_bytes: int = 0
    blocks_needed: int = 0
    inodes_needed: int = 0


@dataclass
class MkfsResult:
    path: Path
    size: int
    nr_blocks: int
    nr_inodes: int
    files: int
    skipped: list[str]
    seconds: float

    @property
    def inodes(self) -> int:
        """Inodes a file can use: every slot but the reserved slot 0 (as `info` and df -i)."""
        return self.nr_inodes - 1


def scan_tree(src: Path) -> Scan:
    """Walk `src` without following symlinks; size what the image needs."""
    if not src.is_dir():
        raise NvramfsError(f"{src}: no such directory")
    sc = Scan(src)
    seen_links: set[tuple[int, int]] = set()
    dir_bytes: dict[str, int] = {}
    stack = [""]
    root_st = os.lstat(src)
    sc.nodes.append(Node("", root_st))
    index = {"": sc.nodes[0]}
    while stack:
        rel = stack.pop()
        full = src / rel if rel else src
        try:
            entries = sorted(os.scandir(full), key=lambda e: e.name)
        except OSError as exc:
            raise NvramfsError(f"{full}: {exc.strerror}") from None
        for ent in entries:
            name = os.fsencode(ent.name)
            crel = f"{rel}/{ent.name}" if rel else ent.name
            if len(name) > F.NAME_MAX:
                raise NvramfsError(f"{src / crel}: name longer than {F.NAME_MAX} bytes")
            if not rel and name == RESERVED_NAME:
                raise NvramfsError(
                    f"{src / crel}: the top-level name .nvramfs is reserved for the mount's "
                    "control directory"
                )
            st = ent.stat(follow_symlinks=False)
            fmt = stat.S_IFMT(st.st_mode)
            if fmt not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK):
                kind = {
                    stat.S_IFCHR: "character device",
                    stat.S_IFBLK: "block device",
                    stat.S_IFIFO: "fifo",
                    stat.S_IFSOCK: "socket",
                }.get(fmt, "special file")
                sc.skipped.append(f"{crel} ({kind})")
                continue
            node = Node(crel, st)
            index[rel].children.append(crel)
            dir_bytes[rel] = dir_bytes.get(rel, 0) + F.dirent_len(len(name))
            sc.nodes.append(node)
            index[crel] = node
            if fmt == stat.S_IFDIR:
                stack.append(crel)
                sc.inodes_needed += 1
            elif fmt == stat.S_IFREG:
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in seen_links:
                    continue
                seen_links.add(key)
                sc.inodes_needed += 1
                sc.data_bytes += st.st_size
                pages = -(-st.st_size // BS)
                ext_blocks = 0 if pages <= 0 else 1  # contiguous: one extent; slack for a chain
                sc.blocks_needed += pages + ext_blocks
            else:
                sc.inodes_needed += 1
                if len(os.readlink(src / crel)) > F.INLINE_SIZE:
                    sc.blocks_needed += 1
    for b in dir_bytes.values():
        sc.blocks_needed += -(-b // (F.PAYLOAD * 3 // 4)) + 1
    # Parents before children: sort by depth, then path.
    sc.nodes.sort(key=lambda n: (n.rel.count("/") if n.rel else -1, n.rel))
    return sc


def _smallest_size() -> int:
    """The smallest empty image mkfs makes: metadata plus 64 data blocks."""
    blocks = 1
    while True:
        lay = _plan(blocks * BS, 0)
        if not lay.problems() and lay.nr_blocks >= lay.data_start + 64:
            return blocks * BS
        blocks += 1


def _plan(nr_bytes: int, inodes_needed: int) -> F.Layout:
    nr_blocks = nr_bytes // BS
    nr_inodes = max(MIN_INODES, nr_bytes // BYTES_PER_INODE, 2 * inodes_needed + 16)
    nr_inodes = min(nr_inodes, (1 << 31) - F.INODES_PER_BLOCK)
    return F.Layout.compute(nr_blocks, nr_inodes)


def format_image(
    path: Path,
    lay: F.Layout,
    uid: int = 0,
    gid: int = 0,
    *,
    preallocate: bool = False,
    name: Path | None = None,
) -> None:
    """Write an empty filesystem of layout `lay` into the (sparse) file `path`.

    What the daemon stores into without allocating first (superblocks,
    journal, bitmaps, the root's inode-table block) is allocated on the host
    here, so a mount on a host that filled up later cannot die storing there.
    `name` is what error messages call the image (mkfs builds a temporary file).
    """
    name = name or path
    with open(path, "r+b") as f:
        f.truncate(lay.nr_blocks * BS)
        if preallocate:
            _preallocate(f.fileno(), lay.nr_blocks * BS, name)
        else:
            fixed = (lay.itable_start + 1) * BS
            try:
                os.posix_fallocate(f.fileno(), 0, fixed)
            except OSError as exc:
                raise NvramfsError(
                    f"{name}: the host filesystem has no room for the image's metadata "
                    f"({_hsize(fixed)}): {exc.strerror}"
                ) from None
        now = time.time_ns()

        def put(block: int, data: bytes) -> None:
            f.seek(block * BS)
            f.write(data)

        def bitmap(start: int, nbm: int, total: int, used: int) -> None:
            for i in range(nbm):
                bits = np.zeros(F.BITS_PER_BITMAP_BLOCK, np.uint8)
                lo = i * F.BITS_PER_BITMAP_BLOCK
                idx = np.arange(lo, lo + F.BITS_PER_BITMAP_BLOCK)
                bits[(idx < used) | (idx >= total)] = 1
                blk = bytearray(np.packbits(bits, bitorder="little").tobytes())
                blk += bytes(BS - len(blk))
                kind = F.KIND_BBITMAP if start == lay.bbitmap_start else F.KIND_IBITMAP
                F.seal_block(blk, kind, start + i, start + i)
                put(start + i, bytes(blk))

        bitmap(lay.bbitmap_start, lay.bbitmap_blocks, lay.nr_blocks, lay.data_start)
        bitmap(lay.ibitmap_start, lay.ibitmap_blocks, lay.nr_inodes, F.ROOT_INO + 1)
        root = np.zeros(1, F.INODE_DTYPE)
        r = root[0]
        r["mode"] = stat.S_IFDIR | 0o755
        r["uid"], r["gid"], r["nlink"], r["parent"] = uid, gid, 2, F.ROOT_INO
        r["atime_ns"] = r["mtime_ns"] = r["ctime_ns"] = now
        raw = bytearray(root.tobytes())
        raw[-4:] = F.inode_crc(raw, F.ROOT_INO).to_bytes(4, "little")
        iblk = bytearray(BS)
        off = (F.ROOT_INO % F.INODES_PER_BLOCK) * F.INODE_SIZE
        iblk[off : off + F.INODE_SIZE] = raw
        put(lay.itable_start + F.ROOT_INO // F.INODES_PER_BLOCK, bytes(iblk))
        sb = np.zeros(1, F.SB_DTYPE)
        s = sb[0]
        s["magic"], s["version"], s["block_size"] = F.MAGIC, F.VERSION, BS
        s["features"] = F.FEATURES
        for k in (
            "nr_blocks",
            "nr_inodes",
            "journal_start",
            "journal_blocks",
            "bbitmap_start",
            "bbitmap_blocks",
            "ibitmap_start",
            "ibitmap_blocks",
            "itable_start",
            "itable_blocks",
            "data_start",
        ):
            s[k] = getattr(lay, k)
        s["free_blocks"] = lay.nr_blocks - lay.data_start
        s["free_inodes"] = lay.nr_inodes - 2
        s["generation"] = 1
        s["state"] = F.STATE_CLEAN
        s["root_ino"] = F.ROOT_INO
        s["mkfs_time_ns"] = s["write_time_ns"] = now
        s["uuid"] = np.void(uuid.uuid4().bytes)
        raw = bytearray(sb.tobytes())
        raw[-4:] = F.sb_crc(raw).to_bytes(4, "little")
        blk = bytes(raw) + bytes(BS - F.SB_SIZE)
        put(0, blk)
        put(1, blk)


def _copy_file(img: Image, ino: int, path: Path, progress: Callable[[int], None]) -> None:
    with open(path, "rb", buffering=0) as f:
        page = 0
        while True:
            buf = f.read(CHUNK_PAGES * BS)
            if not buf:
                break
            n = -(-len(buf) // BS)
            arr = np.zeros(n * BS, np.uint8)
            arr[: len(buf)] = np.frombuffer(buf, np.uint8)
            pages = arr.reshape(n, BS)
            keep = np.flatnonzero(pages.any(axis=1))  # all-zero pages stay holes
            if len(keep):
                img.write_pages(ino, keep + page, pages if len(keep) == n else pages[keep])
            page += n
            progress(len(buf))


def mkfs(
    image: str | os.PathLike,
    *,
    size: int | None = None,
    src: str | os.PathLike | None = None,
    force: bool = False,
    progress: Progress | None = None,
    preallocate: bool = False,
) -> MkfsResult:
    """Make an image (empty of `size`, or holding the tree `src`); see module doc."""
    t0 = time.monotonic()
    path = Path(image)
    if path.exists() and not force:
        raise NvramfsError(f"{path}: already exists (use --force to overwrite)")
    if path.is_dir():
        raise NvramfsError(f"{path}: is a directory")
    sc = scan_tree(Path(src)) if src is not None else None
    # Size: what the tree needs (data + metadata), then room to grow.
    if sc is not None:
        need_blocks = sc.blocks_needed + 16
        lay = _plan(need_blocks * BS, sc.inodes_needed)
        for _ in range(3):  # metadata grows with the size; converge
            lay = _plan((need_blocks + lay.data_start) * BS, sc.inodes_needed)
        need = (need_blocks + lay.data_start + 64) * BS
        if size is None:
            size = need + max(need, GROW_MIN)
        elif size < need:
            raise NvramfsError(
                f"size {format_bytes(size)} too small: the tree needs at least {need} bytes "
                f"({format_bytes(need)})"
            )
    elif size is None:
        raise NvramfsError("give --size SIZE for an empty image, or --from DIR", 2)
    asked = size
    size -= size % BS
    lay = _plan(size, sc.inodes_needed if sc else 0)
    if lay.problems() or lay.nr_blocks < lay.data_start + 64:
        need = _smallest_size()
        raise NvramfsError(
            f"size {format_bytes(asked)} too small: at least {need} bytes "
            f"({format_bytes(need)}) are needed"
        )
    if sc is not None and lay.nr_blocks - lay.data_start < sc.blocks_needed + 64:
        need = (sc.blocks_needed + 64 + lay.data_start) * BS
        raise NvramfsError(
            f"size {format_bytes(size)} too small: the tree needs at least {need} bytes"
        )
    # The old image's lock first (as mke2fs refuses a mounted device), then the
    # new file's, both held across the rename: no mount starts in between.
    old_lock = None
    if path.exists():
        try:
            old_lock = lock_image(path)
        except ImageInUse:
            raise NvramfsError(
                f"{path} is in use by a mount; will not make a filesystem here"
            ) from None
        except OSError as exc:
            raise NvramfsError(f"{path}: {exc.strerror or exc}") from None
    tmp = path.with_name(f".{path.name}.mkfs-{os.getpid()}")
    new_lock = None
    try:
        new_lock = os.open(tmp, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        lock_fd(new_lock)
        st0 = sc.nodes[0].st if sc else None
        format_image(
            tmp,
            lay,
            st0.st_uid if st0 else os.getuid(),
            st0.st_gid if st0 else os.getgid(),
            preallocate=preallocate,
            name=path,
        )
        files = 0
        if sc is not None:
            files = _populate(tmp, sc, progress)
        else:
            Image.open(tmp, _tool=True).close()  # one journaled transaction: the journal is valid
        os.replace(tmp, path)
    except FsError as exc:  # HostFull included: its message says the host is full
        where = " while copying the tree" if sc is not None else ""
        raise NvramfsError(f"mkfs: {exc.strerror}{where}") from None
    except OSError as exc:
        raise NvramfsError(f"{path}: {exc.strerror or exc}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
        for fd in (new_lock, old_lock):
            if fd is not None:
                unlock_image(fd)
    return MkfsResult(
        path,
        lay.nr_blocks * BS,
        lay.nr_blocks,
        lay.nr_inodes,
        files,
        sc.skipped if sc else [],
        time.monotonic() - t0,
    )


def _populate(tmp: Path, sc: Scan, progress: Progress | None) -> int:
    persist = Persist()
    img = Image.open(tmp, persist=persist, _tool=True)
    persist.bulk = True
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, sc.data_bytes)

    inos: dict[str, int] = {"": F.ROOT_INO}
    links: dict[tuple[int, int], int] = {}
    dirs: list[tuple[int, os.stat_result]] = []
    try:
        for node in sc.nodes:
            st = node.st
            if not node.rel:
                dirs.append((F.ROOT_INO, st))
                continue
            parent_rel, _, name = node.rel.rpartition("/")
            parent = inos[parent_rel]
            bname = os.fsencode(name)
            full = sc.root / node.rel
            fmt = stat.S_IFMT(st.st_mode)
            perm = stat.S_IMODE(st.st_mode)
            if fmt == stat.S_IFDIR:
                ino = img.mkdir(parent, bname, perm, st.st_uid, st.st_gid)
                dirs.append((ino, st))
            elif fmt == stat.S_IFLNK:
                ino = img.symlink(
                    parent, bname, os.fsencode(os.readlink(full)), st.st_uid, st.st_gid
                )
                img.setattr(
                    ino, atime_ns=st.st_atime_ns, mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns
                )
            else:
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in links:
                    ino = links[key]
                    img.link(ino, parent, bname)
                    img.setattr(ino, ctime_ns=st.st_ctime_ns)
                else:
                    ino = img.create(parent, bname, stat.S_IFREG | perm, st.st_uid, st.st_gid)
                    links[key] = ino
                    _copy_file(img, ino, full, tick)
                    img.setattr(
                        ino,
                        size=st.st_size,
                        atime_ns=st.st_atime_ns,
                        mtime_ns=st.st_mtime_ns,
                        ctime_ns=st.st_ctime_ns,
                    )
            inos[node.rel] = ino
        # Directory times last: adding entries stamped them.
        for ino, st in dirs:
            img.setattr(
                ino,
                mode=stat.S_IMODE(st.st_mode),
                atime_ns=st.st_atime_ns,
                mtime_ns=st.st_mtime_ns,
                ctime_ns=st.st_ctime_ns,
            )
    except OSError as exc:
        if isinstance(exc, FsError) and exc.errno == errno.ENOSPC and not isinstance(exc, HostFull):
            img.close(clean=False)
            raise NvramfsError("mkfs: the image ran out of space copying the tree") from None
        img.close(clean=False)
        if isinstance(exc, FsError):
            raise
        raise NvramfsError(f"{exc.filename or sc.root}: {exc.strerror}") from None
    except BaseException:
        img.close(clean=False)
        raise
    img.close()
    return len(sc.nodes) - 1
