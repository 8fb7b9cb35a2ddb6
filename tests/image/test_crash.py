"""Power cuts at every fence: each rebuilt image passes fsck and holds every acknowledged update.

RecordingPersist logs every store, flush and fence of a run of updates. For
each fence we rebuild the image as a power cut right after it would leave it
(only flushed-and-fenced stores survive), and, in the torn variant, add a
random part of the stores issued after it (real NVRAM may have written back
any dirty cache line). fsck must accept every image, and what it holds must
be exactly the state after the last acknowledged update, or after the one in
flight (an update is atomic).
"""

from __future__ import annotations

import random
import stat
from pathlib import Path

import numpy as np

from nvramfs.image import Image
from nvramfs.image.fsck import fsck
from nvramfs.image.mkfs import mkfs
from nvramfs.image.persist import RecordingPersist

BS = 4096


def snapshot(img: Image) -> dict:
    """Everything a user can see: paths, kinds, modes, nlinks, contents, xattrs."""
    out: dict = {}

    def walk(ino: int, prefix: str) -> None:
        for _, name, child in img.readdir(ino):
            a = img.getattr(child)
            path = prefix + name.decode()
            fmt = stat.S_IFMT(a.mode)
            if fmt == stat.S_IFDIR:
                out[path] = ("dir", a.mode, a.nlink)
                walk(child, path + "/")
            elif fmt == stat.S_IFLNK:
                out[path] = ("lnk", img.readlink(child))
            else:
                n = -(-a.size // BS)
                data = b"".join(
                    bytes(img.block_view(int(b))) if b else bytes(BS) for b in img.bmap(child, 0, n)
                )[: a.size]
                xs = {k: img.getxattr(child, k) for k in img.listxattr(child)}
                out[path] = ("reg", a.mode, a.nlink, a.size, data, tuple(sorted(xs.items())))

    walk(1, "/")
    return out


def pg(fill: int) -> bytes:
    return bytes([fill]) * BS


def run_updates(img: Image, ack: list[tuple[int, dict]]) -> None:
    """A sequence of every kind of update; after each, note (fence count, visible state)."""
    rec: RecordingPersist = img.persist  # type: ignore[assignment]

    def done() -> None:
        ack.append((rec.fences(), snapshot(img)))

    d = img.mkdir(1, b"d", 0o755, 0, 0)
    done()
    a = img.create(d, b"a", 0o644, 0, 0)
    done()
    img.write_pages(a, np.arange(3), [pg(1), pg(2), pg(3)])
    done()
    img.setattr(a, size=3 * BS - 100)
    done()
    b = img.create(1, b"b", 0o600, 0, 0)
    done()
    img.write_pages(b, np.array([0, 5]), [pg(7), pg(8)])
    done()
    img.setattr(b, size=6 * BS)
    done()
    img.symlink(d, b"s", b"../b", 0, 0)
    done()
    img.link(a, 1, b"a2")
    done()
    img.rename(d, b"a", 1, b"x")
    done()
    img.write_pages(a, np.array([1]), [pg(9)])  # in place
    done()
    img.setattr(a, size=5000)
    done()
    img.unlink(1, b"a2")
    done()
    img.setxattr(b, b"user.k", b"v" * 50)
    done()
    img.rename(1, b"b", 1, b"x")  # replaces x (a): freed
    done()
    f = img.create(1, b"frag", 0o644, 0, 0)
    done()
    img.write_pages(f, np.arange(0, 60, 2), [pg(i) for i in range(30)])  # 30 extents: a chain
    done()
    img.setattr(f, size=60 * BS)
    done()
    img.setattr(f, size=7 * BS)
    done()
    o = img.create(1, b"open", 0o644, 0, 0)
    img.write_pages(o, np.arange(2), [pg(4), pg(4)])
    done()
    img.unlink(1, b"open", still_open=True)
    done()
    img.release(o)
    done()
    img.unlink(d, b"s")
    done()
    img.rmdir(1, b"d")
    done()


def crash_states(tmp_path: Path, torn: bool) -> tuple[int, int]:
    base = tmp_path / "base.img"
    mkfs(base, size=4 << 20)
    base_bytes = base.read_bytes()
    rec = RecordingPersist()
    img = Image.open(base, persist=rec)
    ack: list[tuple[int, dict]] = [(0, snapshot(img))]
    run_updates(img, ack)
    img.close()
    ack.append((rec.fences(), ack[-1][1]))
    rng = random.Random(1234)
    crash = tmp_path / "crash.img"
    checked = 0
    for nfence, data in rec.crash_images(base_bytes, torn=rng if torn else None):
        crash.write_bytes(data)
        rep = fsck(str(crash))
        assert rep.exit_code == 0, (nfence, rep.errors)
        k = max(i for i, (f, _) in enumerate(ack) if f <= nfence)
        with Image.open(crash, readonly=True) as cimg:
            got = snapshot(cimg)
        allowed = [ack[k][1]] + ([ack[k + 1][1]] if k + 1 < len(ack) else [])
        assert got in allowed or (
            torn and k + 1 < len(ack) and torn_overwrite(got, ack[k][1], ack[k + 1][1])
        ), f"fence {nfence}: state is neither update {k} nor {k + 1}"
        # The next writable open recovers it and the result is clean.
        with Image.open(crash) as cimg:
            assert snapshot(cimg) == got
        assert fsck(str(crash)).exit_code == 0
        checked += 1
    return checked, rec.fences()


def test_power_cut_at_every_fence(fast_dir: Path) -> None:
    checked, fences = crash_states(fast_dir, torn=False)
    assert checked == fences + 1 and fences > 100


def test_power_cut_with_torn_unfenced_stores(fast_dir: Path) -> None:
    checked, fences = crash_states(fast_dir, torn=True)
    assert checked > fences


def test_power_cut_during_a_truncate_split_over_transactions(fast_dir: Path, monkeypatch) -> None:
    """A truncate too big for one transaction goes through the orphan list; every cut is clean."""
    base = fast_dir / "base.img"
    mkfs(base, size=4 << 20)
    with Image.open(base) as img:
        f = img.create(1, b"f", 0o644, 0, 0)
        img.write_pages(f, np.arange(0, 80, 2), [pg(i + 1) for i in range(40)])
        img.setattr(f, size=80 * BS)
    base_bytes = base.read_bytes()
    rec = RecordingPersist()
    img = Image.open(base, persist=rec)
    before = snapshot(img)
    start = rec.fences()
    monkeypatch.setattr(Image, "_txn_room", lambda self: 1)  # one extent run per transaction
    img.setattr(f, size=3 * BS)
    monkeypatch.undo()
    after = snapshot(img)
    acked = rec.fences()
    assert acked - start > 4 * 10  # many transactions
    img.close()
    crash = fast_dir / "crash.img"
    for nfence, data in rec.crash_images(base_bytes):
        crash.write_bytes(data)
        rep = fsck(str(crash))
        assert rep.exit_code == 0, (nfence, rep.errors)
        with Image.open(crash) as cimg:  # recovery finishes an interrupted truncate
            got = snapshot(cimg)
            if got == after:
                assert cimg.getattr(f).blocks == 2 * 8  # pages 0 and 2 are left
        assert got in (before, after)
        if nfence >= acked:
            assert got == after
        assert fsck(str(crash)).exit_code == 0


def torn_overwrite(got: dict, old: dict, new: dict) -> bool:
    """Is `got` the state between `old` and `new` with file bytes mixed, as a torn overwrite?"""
    if got.keys() != old.keys() or old.keys() != new.keys():
        return False
    for path, g in got.items():
        o, n = old[path], new[path]
        if g in (o, n):
            continue
        if g[0] != "reg" or g[:4] != o[:4] or o[:4] != n[:4] or g[5] != o[5]:
            return False
        gb, ob, nb = (np.frombuffer(x[4], np.uint8) for x in (g, o, n))
        if not ((gb == ob) | (gb == nb)).all():
            return False
    return True


def reachable(img: Image) -> set[int]:
    out = {1}
    todo = [1]
    while todo:
        for _, _n, c in img.readdir(todo.pop()):
            out.add(c)
            if stat.S_ISDIR(img.getattr(c).mode):
                todo.append(c)
    return out


def random_updates(img: Image, ack: list[tuple[int, dict]], seed: int, n: int) -> None:
    """`n` random namespace/data updates (errors are fine: a refused update changes nothing)."""
    from nvramfs.image import RENAME_EXCHANGE, RENAME_NOREPLACE, FsError

    rnd = random.Random(seed)
    rec: RecordingPersist = img.persist  # type: ignore[assignment]
    names = [b"a", b"b", b"c", b"long-" + b"n" * 60]
    dirs, files = [1], []
    for _ in range(n):
        op = rnd.choice(
            ["mk", "mk", "dir", "write", "write", "trunc", "ren", "link", "rm", "xattr"]
        )
        d = rnd.choice(dirs)
        name = rnd.choice(names)
        try:
            if op == "mk":
                files.append(img.create(d, name, 0o644, 0, 0))
            elif op == "dir":
                dirs.append(img.mkdir(d, name, 0o755, 0, 0))
            elif op == "write" and files:
                f = rnd.choice(files)
                idx = np.array(rnd.sample(range(12), rnd.randint(1, 4)))
                img.write_pages(f, idx, [pg(rnd.randint(1, 255)) for _ in idx])
            elif op == "trunc" and files:
                img.setattr(rnd.choice(files), size=rnd.randint(0, 12 * BS))
            elif op == "ren":
                flags = rnd.choice([0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE])
                img.rename(d, name, rnd.choice(dirs), rnd.choice(names), flags)
            elif op == "link" and files:
                img.link(rnd.choice(files), d, name)
            elif op == "rm":
                ino = img.lookup(d, name)
                if stat.S_ISDIR(img.getattr(ino).mode):
                    img.rmdir(d, name)
                else:
                    img.unlink(d, name, still_open=rnd.random() < 0.3)
            elif op == "xattr" and files:
                img.setxattr(rnd.choice(files), b"user." + name, bytes(rnd.randint(0, 300)))
        except FsError:
            pass
        alive = reachable(img)  # forget what is gone
        dirs = [x for x in dirs if x in alive]
        files = [x for x in files if x in alive]
        ack.append((rec.fences(), snapshot(img)))


def test_power_cut_during_random_updates(fast_dir: Path) -> None:
    base = fast_dir / "base.img"
    mkfs(base, size=4 << 20)
    base_bytes = base.read_bytes()
    rec = RecordingPersist()
    img = Image.open(base, persist=rec)
    ack: list[tuple[int, dict]] = [(0, snapshot(img))]
    random_updates(img, ack, seed=7, n=70)
    img.close()
    ack.append((rec.fences(), ack[-1][1]))
    crash = fast_dir / "crash.img"
    rng = random.Random(99)
    for nfence, data in rec.crash_images(base_bytes, torn=rng):
        crash.write_bytes(data)
        rep = fsck(str(crash))
        assert rep.exit_code == 0, (nfence, rep.errors)
        k = max(i for i, (f, _) in enumerate(ack) if f <= nfence)
        with Image.open(crash, readonly=True) as cimg:
            got = snapshot(cimg)
        allowed = [ack[k][1]] + ([ack[k + 1][1]] if k + 1 < len(ack) else [])
        if got not in allowed:
            # A page rewritten in place may be torn: each byte old or new, nothing else.
            assert k + 1 < len(ack) and torn_overwrite(got, ack[k][1], ack[k + 1][1]), (
                f"fence {nfence}: neither update {k} nor {k + 1}"
            )


def test_preen_takes_every_power_cut_state_to_clean(fast_dir: Path) -> None:
    """What a power cut leaves is recovery work, never an inconsistency: fsck -p exits 0 or 1
    (journal replay, orphans, the superblock copy), the state is the one a mount would
    recover, and a second check is clean."""
    base = fast_dir / "base.img"
    mkfs(base, size=4 << 20)
    base_bytes = base.read_bytes()
    rec = RecordingPersist()
    img = Image.open(base, persist=rec)
    run_updates(img, [(0, snapshot(img))])
    img.close()
    crash = fast_dir / "crash.img"
    n = 0
    for nfence, data in rec.crash_images(base_bytes):
        if nfence % 4:
            continue
        crash.write_bytes(data)
        with Image.open(crash, readonly=True) as cimg:
            want = snapshot(cimg)
        rep = fsck(str(crash), mode="p")
        assert rep.exit_code in (0, 1) and not rep.unexpected, (nfence, rep.errors, rep.remaining)
        assert all(f.startswith(("recovery:", "journal replayed", "superblock")) for f in rep.fixed)
        assert fsck(str(crash)).exit_code == 0
        with Image.open(crash, readonly=True) as cimg:
            assert cimg.was_clean and snapshot(cimg) == want
        n += 1
    assert n > 20


def _file_bytes(img: Image, ino: int) -> bytes:
    size = img.getattr(ino).size
    n = -(-size // BS)
    out = b"".join(bytes(img.block_view(int(b))) if b else bytes(BS) for b in img.bmap(ino, 0, n))
    return out[:size]


def test_power_cut_inside_batched_writeback_of_an_append(fast_dir: Path) -> None:
    """An append-and-extend workload through the mm (a DRAM budget far smaller than
    the file: reclaim and flusher batches write it back, several pages per
    transaction), the size pushed now and then as the FUSE layer does. At every
    fence: fsck is clean, the size on the image never covers data the image does
    not hold (ordered data: what it shows is a prefix of what was written, never
    zeros), and every fsync'ed length is there."""
    from nvramfs.mm import MemoryManager

    base = fast_dir / "base.img"
    mkfs(base, size=4 << 20)
    base_bytes = base.read_bytes()
    rec = RecordingPersist()
    img = Image.open(base, persist=rec)
    f = img.create(1, b"log", 0o644, 0, 0)
    mm = MemoryManager(img, 24)
    img.reserve(160)
    rnd = random.Random(7)
    want = bytearray()
    synced: list[tuple[int, int]] = []  # (fences when fsync returned, length)
    batches = 0
    for step in range(70):
        n = rnd.randint(1, 3 * BS)
        chunk = bytes(b % 255 + 1 for b in rnd.randbytes(n))  # never a zero byte
        mm.write(f, len(want), chunk)
        want += chunk
        if step % 7 == 3:
            batches += mm.writeback_batch() > 0
        if step % 7 == 5:  # the tick's flush_meta
            img.setattr(f, ordered_size=len(want), still_dirty=mm.dirty_indices(f))
        if step % 7 == 6:
            mm.fsync(f)
            img.setattr(f, ordered_size=len(want), still_dirty=mm.dirty_indices(f))
            assert img.getattr(f).size == len(want)
            synced.append((rec.fences(), len(want)))
    mm.close()
    img.close()
    assert batches >= 5 and len(want) > 40 * BS
    crash = fast_dir / "crash.img"
    checked = grew = 0
    last = -1
    for nfence, data in rec.crash_images(base_bytes):
        crash.write_bytes(data)
        rep = fsck(str(crash))
        assert rep.exit_code == 0, (nfence, rep.errors)
        with Image.open(crash) as cimg:
            names = {name for _, name, _ in cimg.readdir(1)}
            got = _file_bytes(cimg, cimg.lookup(1, b"log")) if b"log" in names else b""
        assert got == want[: len(got)], f"fence {nfence}: size {len(got)} covers unwritten data"
        for at, length in synced:
            if at <= nfence:
                assert len(got) >= length, f"fence {nfence}: fsync'ed {length} bytes, {len(got)}"
        grew += len(got) > last
        last = len(got)
        checked += 1
    assert checked == rec.fences() + 1 and grew > 10


def test_one_msync_per_fence_whatever_the_batch(fast_dir: Path) -> None:
    """`Persist.msyncs` (stats: writeback.msyncs) counts one msync per fence that has
    flushed ranges: a writeback batch that maps new blocks costs five (data, journal,
    checkpoint, superblock A, B) whether it holds 1 page or 64; an in-place rewrite
    with no size change costs one."""
    base = fast_dir / "m.img"
    mkfs(base, size=4 << 20)
    rec = RecordingPersist()
    img = Image.open(base, persist=rec)
    f = img.create(1, b"f", 0o644, 0, 0)
    img.reserve(65)
    costs = []
    for idx in (np.array([0]), np.arange(1, 65)):
        before = rec.msyncs
        img.write_pages(f, idx, [pg(7)] * len(idx), size=(int(idx[-1]) + 1) * BS)
        costs.append(rec.msyncs - before)
    before = rec.msyncs
    img.write_pages(f, np.arange(0, 64, 2), [pg(9)] * 32)
    costs.append(rec.msyncs - before)
    assert costs == [5, 5, 1]
    flushed_fences = 0
    pending = False
    for op in rec.log:
        if op.kind == "flush":
            pending = True
        elif op.kind == "fence":
            flushed_fences += pending
            pending = False
    assert rec.msyncs == flushed_fences
    assert img.getattr(f).size == 65 * BS
    img.close()
