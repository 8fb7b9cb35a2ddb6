"""A hypothesis state machine: random namespace and data operations against a model.

Each rule runs on a real image and on a small in-memory model of POSIX
semantics; the errno (or success) must agree, and after every step every
directory listing, link count, size and the data of the touched file must
match. At the end the image is closed, fsck must find it clean, and a fresh
open must show the same tree.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from nvramfs.image import RENAME_EXCHANGE, RENAME_NOREPLACE, FsError, Image
from nvramfs.image.fsck import fsck
from nvramfs.image.mkfs import mkfs

BS = 4096
NAMES = st.sampled_from([b"a", b"b", b"c", b"dd", b"e" * 40])
ROOT = 1


class Model:
    """Directories: {ino: {name: ino}}; files: {ino: bytearray}; parents of directories."""

    def __init__(self) -> None:
        self.dirs: dict[int, dict[bytes, int]] = {ROOT: {}}
        self.parent: dict[int, int] = {ROOT: ROOT}
        self.files: dict[int, bytearray] = {}  # every mapped page, also past EOF
        self.size: dict[int, int] = {}
        self.links: dict[int, bytes] = {}  # symlink targets
        self.xattrs: dict[int, dict[bytes, bytes]] = {}
        self.orphans: set[int] = set()  # unlinked while open: nlink 0, still readable

    def forget(self, ino: int) -> None:
        for table in (self.files, self.size, self.links, self.xattrs):
            table.pop(ino, None)

    def visible(self, f: int) -> bytes:
        size = self.size[f]
        full = bytes(self.files[f][:size])
        return full + bytes(size - len(full))

    def nlink(self, ino: int) -> int:
        if ino in self.dirs:
            return 2 + sum(1 for c in self.dirs[ino].values() if c in self.dirs)
        return sum(1 for d in self.dirs.values() for c in d.values() if c == ino)

    def ancestors(self, d: int) -> set[int]:
        out = {d}
        while d != ROOT:
            d = self.parent[d]
            out.add(d)
        return out


class ImageMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
        self.tmp = Path(tempfile.mkdtemp(prefix="nvramfs-model-", dir=base))
        self.path = self.tmp / "m.img"
        mkfs(self.path, size=4 << 20)
        self.img = Image.open(self.path)
        self.m = Model()

    def teardown(self) -> None:
        try:
            self.img.close()  # reclaims the orphans
            for ino in self.m.orphans:
                self.m.forget(ino)
            rep = fsck(str(self.path))
            assert rep.exit_code == 0, rep.errors
            self.img = Image.open(self.path, readonly=True)
            self.check_all()
            self.img.close()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # ------------------------------------------------------------ helpers
    def expect(self, err: int | None, fn, *args, **kw):
        try:
            got = fn(*args, **kw)
        except FsError as exc:
            assert exc.errno == err, f"{fn.__name__}{args}: errno {exc.errno}, model says {err}"
            return None
        assert err is None, f"{fn.__name__}{args}: succeeded, model says errno {err}"
        return got

    def some_dir(self, data) -> int:
        return data.draw(st.sampled_from(sorted(self.m.dirs)))

    def some_name(self, data, d: int) -> bytes:
        """Mostly a name that exists in `d` (so operations get past ENOENT)."""
        names = sorted(self.m.dirs[d])
        if names and data.draw(st.integers(0, 3)):
            return data.draw(st.sampled_from(names))
        return data.draw(NAMES)

    def check_dir(self, d: int) -> None:
        got = {n: i for _, n, i in self.img.readdir(d)}
        assert got == self.m.dirs[d]
        assert self.img.getattr(d).nlink == self.m.nlink(d)

    def check_all(self) -> None:
        for d in self.m.dirs:
            self.check_dir(d)
        for f in self.m.files:
            data = self.m.visible(f)
            a = self.img.getattr(f)
            assert a.nlink == self.m.nlink(f) and a.size == len(data)
            n = -(-a.size // BS)
            got = b"".join(
                bytes(self.img.block_view(int(b))) if b else bytes(BS)
                for b in self.img.bmap(f, 0, n)
            )[: a.size]
            assert got == data, f"inode {f}"
            xs = self.m.xattrs.get(f, {})
            assert sorted(self.img.listxattr(f)) == sorted(xs)
            for k, v in xs.items():
                assert self.img.getxattr(f, k) == v
        for ln, target in self.m.links.items():
            assert self.img.readlink(ln) == target
            assert self.img.getattr(ln).nlink == self.m.nlink(ln)

    # -------------------------------------------------------------- rules
    @rule(data=st.data(), name=NAMES, is_dir=st.booleans())
    def make(self, data, name: bytes, is_dir: bool) -> None:
        d = self.some_dir(data)
        err = errno.EEXIST if name in self.m.dirs[d] else None
        if is_dir:
            ino = self.expect(err, self.img.mkdir, d, name, 0o755, 0, 0)
        else:
            ino = self.expect(err, self.img.create, d, name, 0o644, 0, 0)
        if ino:
            self.m.dirs[d][name] = ino
            if is_dir:
                self.m.dirs[ino] = {}
                self.m.parent[ino] = d
            else:
                self.m.files[ino] = bytearray()
                self.m.size[ino] = 0

    @precondition(lambda self: self.m.files)
    @rule(data=st.data(), name=NAMES)
    def link(self, data, name: bytes) -> None:
        f = data.draw(st.sampled_from(sorted(self.m.files)))
        d = self.some_dir(data)
        err = errno.EEXIST if name in self.m.dirs[d] else None
        if f in self.m.orphans:
            err = errno.ENOENT
        self.expect(err, self.img.link, f, d, name)
        if err is None:
            self.m.dirs[d][name] = f

    @rule(data=st.data())
    def unlink(self, data) -> None:
        d = self.some_dir(data)
        name = self.some_name(data, d)
        ino = self.m.dirs[d].get(name)
        still_open = data.draw(st.booleans())
        err = errno.ENOENT if ino is None else errno.EISDIR if ino in self.m.dirs else None
        self.expect(err, self.img.unlink, d, name, still_open=still_open)
        if err is None:
            del self.m.dirs[d][name]
            if self.m.nlink(ino) == 0:
                if still_open and ino in self.m.files:
                    self.m.orphans.add(ino)  # readable until release
                else:
                    self.m.forget(ino)

    @precondition(lambda self: self.m.orphans)
    @rule(data=st.data())
    def release(self, data) -> None:
        ino = data.draw(st.sampled_from(sorted(self.m.orphans)))
        self.img.release(ino)
        self.m.orphans.discard(ino)
        self.m.forget(ino)
        self.expect(errno.ENOENT, self.img.getattr, ino)

    @rule(data=st.data(), name=NAMES, length=st.integers(1, 300))
    def symlink(self, data, name: bytes, length: int) -> None:
        d = self.some_dir(data)
        target = (b"t/" * length)[:length]
        err = errno.EEXIST if name in self.m.dirs[d] else None
        ino = self.expect(err, self.img.symlink, d, name, target, 0, 0)
        if ino:
            self.m.dirs[d][name] = ino
            self.m.links[ino] = target

    @precondition(lambda self: self.m.files)
    @rule(data=st.data(), name=st.sampled_from([b"user.a", b"user.bb"]), size=st.integers(-1, 900))
    def xattr(self, data, name: bytes, size: int) -> None:
        f = data.draw(st.sampled_from(sorted(self.m.files)))
        xs = self.m.xattrs.setdefault(f, {})
        if size < 0:
            self.expect(None if name in xs else errno.ENODATA, self.img.removexattr, f, name)
            xs.pop(name, None)
        else:
            self.img.setxattr(f, name, bytes([size % 256]) * size)
            xs[name] = bytes([size % 256]) * size

    @rule(data=st.data())
    def rmdir(self, data) -> None:
        d = self.some_dir(data)
        name = self.some_name(data, d)
        ino = self.m.dirs[d].get(name)
        if ino is None:
            err = errno.ENOENT
        elif ino not in self.m.dirs:
            err = errno.ENOTDIR
        elif self.m.dirs[ino]:
            err = errno.ENOTEMPTY
        else:
            err = None
        self.expect(err, self.img.rmdir, d, name)
        if err is None:
            del self.m.dirs[d][name]
            del self.m.dirs[ino]
            del self.m.parent[ino]

    @rule(
        data=st.data(),
        flags=st.sampled_from([0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE]),
    )
    def rename(self, data, flags: int) -> None:
        m = self.m
        sd, dd = self.some_dir(data), self.some_dir(data)
        a, b = self.some_name(data, sd), self.some_name(data, dd)
        src, dst = m.dirs[sd].get(a), m.dirs[dd].get(b)
        err = None
        if src is None:
            err = errno.ENOENT
        elif flags == RENAME_EXCHANGE:
            if dst is None:
                err = errno.ENOENT
            elif (src in m.dirs and src in m.ancestors(dd)) or (
                dst in m.dirs and dst in m.ancestors(sd)
            ):
                err = errno.EINVAL
        elif src == dst:
            pass
        elif src in m.dirs and src in m.ancestors(dd):
            err = errno.EINVAL
        elif dst is not None:
            if flags == RENAME_NOREPLACE:
                err = errno.EEXIST
            elif src in m.dirs and dst not in m.dirs:
                err = errno.ENOTDIR
            elif src not in m.dirs and dst in m.dirs:
                err = errno.EISDIR
            elif dst in m.dirs and m.dirs[dst]:
                err = errno.ENOTEMPTY
        self.expect(err, self.img.rename, sd, a, dd, b, flags)
        if err is not None or src == dst:
            return
        if flags == RENAME_EXCHANGE:
            m.dirs[sd][a], m.dirs[dd][b] = dst, src
            for i, p in ((src, dd), (dst, sd)):
                if i in m.dirs:
                    m.parent[i] = p
            return
        del m.dirs[sd][a]
        m.dirs[dd][b] = src
        if src in m.dirs:
            m.parent[src] = dd
        if dst is not None:
            if dst in m.dirs:
                del m.dirs[dst]
                del m.parent[dst]
            elif m.nlink(dst) == 0:
                m.forget(dst)

    @precondition(lambda self: self.m.files)
    @rule(
        data=st.data(),
        pages=st.lists(st.integers(0, 24), min_size=1, max_size=6),
        fill=st.integers(1, 255),
    )
    def write(self, data, pages: list[int], fill: int) -> None:
        """Writeback of whole pages; the size does not change (pages past EOF stay hidden)."""
        f = data.draw(st.sampled_from(sorted(self.m.files)))
        self.img.write_pages(f, np.array(pages), [bytes([fill]) * BS] * len(pages))
        full = self.m.files[f]
        end = (max(pages) + 1) * BS
        if len(full) < end:
            full.extend(bytes(end - len(full)))
        for p in pages:
            full[p * BS : (p + 1) * BS] = bytes([fill]) * BS

    @precondition(lambda self: self.m.files)
    @rule(data=st.data(), size=st.integers(0, 25 * BS))
    def truncate(self, data, size: int) -> None:
        """A size change drops pages past the new end and zeroes the last page's tail."""
        f = data.draw(st.sampled_from(sorted(self.m.files)))
        self.img.setattr(f, size=size)
        if size != self.m.size[f]:
            keep = -(-size // BS) * BS
            full = self.m.files[f]
            del full[keep:]
            if len(full) > size:
                full[size:] = bytes(len(full) - size)
        self.m.size[f] = size

    @invariant()
    def consistent(self) -> None:
        self.check_all()


ImageMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("NVRAMFS_MODEL_EXAMPLES", "40")),
    stateful_step_count=50,
    deadline=None,
)
TestImageModel = ImageMachine.TestCase
