"""faultfs: a FUSE file system that loses what was not synced when the power is cut.

Run as its own process (``python faultfs.py DISK MOUNTPOINT CONTROL_SOCKET``) so a test can
kill the daemon above it and then "cut the power" below it. What it models:

- ``DISK`` is the medium: whatever is in it survives a cut. File data written through the
  mount is kept apart, in memory, page by page, until the file is fsync'ed or fdatasync'ed
  (and writes with O_DSYNC/RWF_DSYNC, which the kernel turns into an fsync request); only
  then does it reach ``DISK``. Reads see the newest data, as from a page cache.
- A **cut** drops every unsynced page and size change. A **tear** instead keeps a random
  half of the unsynced 512-byte sectors (a disk that wrote some sectors of the cache and not
  others) and drops the rest.
- Names (create, rename, unlink, mkdir) and truncation reach ``DISK`` at once: the harness
  checks data durability, as LazyFS does, not directory fsyncs.
- **Faults**: EIO or ENOSPC for reads, writes or fsyncs of a byte range of one file.

Commands arrive on ``CONTROL_SOCKET`` as one JSON object per line, each answered with one:
``{"cmd": "cut"}``, ``{"cmd": "tear", "seed": 7}``, ``{"cmd": "fault", "op": "write",
"path": "lun0.img", "start": 0, "end": 4096, "errno": "ENOSPC"}``, ``{"cmd": "clear"}``,
``{"cmd": "stats"}``, ``{"cmd": "lie", "on": true}`` (fsync succeeds and syncs nothing: a
disk that ignores flushes, for checking that the campaign notices), ``{"cmd": "exit"}``.

The kernel's page cache stays on (direct_io would stop it sending the fsync that an
RWF_DSYNC write needs): files are opened without keep_cache, so the cache is dropped when the
restarted daemon opens them, and attributes are never cached. A read fault therefore fires
for data the kernel does not hold yet. keep_cache must be turned off by hand (pyfuse3's
FileInfo turns it on): a cut that only drops pages changes no size or mtime, so the kernel
would go on serving the dropped data to the restarted daemon, until a later change of mtime
(a tear writes the medium) made it drop the cache, and a write the campaign had already
seen "land" would vanish. A cut expects the writer dead (kill -9 first), as the campaign does.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import stat
import sys
from dataclasses import dataclass, field

import pyfuse3
import trio
from pyfuse3 import FUSEError

PAGE = 4096
SECTOR = 512
OPS = ("read", "write", "fsync")


@dataclass
class Node:
    inode: int
    path: str  # relative to DISK; "" is the root
    fd: int = -1  # the medium's file, for regular files
    pages: dict[int, bytearray] = field(default_factory=dict)  # unsynced data
    size: int = 0  # what readers see
    durable_size: int = 0  # what survives a cut
    unlinked: bool = False


@dataclass
class Fault:
    op: str
    path: str
    start: int
    end: int
    err: int

    def hits(self, op: str, node: Node, start: int, end: int) -> bool:
        return op == self.op and node.path == self.path and start < self.end and end > self.start


class FaultFS(pyfuse3.Operations):
    def __init__(self, disk: str) -> None:
        super().__init__()
        self.disk = disk
        self.nodes: dict[int, Node] = {pyfuse3.ROOT_INODE: Node(pyfuse3.ROOT_INODE, "")}
        self.by_path: dict[str, int] = {"": pyfuse3.ROOT_INODE}
        self.next_inode = pyfuse3.ROOT_INODE + 1
        self.faults: list[Fault] = []
        self.synced_writes = 0
        self.lying = False  # fsync answers success and syncs nothing (a self-test)

    # -- helpers -------------------------------------------------------------------------
    def real(self, path: str) -> str:
        return os.path.join(self.disk, path)

    def child(self, parent: int, name: bytes) -> str:
        base = self.nodes[parent].path
        text = os.fsdecode(name)
        return f"{base}/{text}" if base else text

    def node_for(self, path: str) -> Node:
        inode = self.by_path.get(path)
        if inode is not None:
            return self.nodes[inode]
        node = Node(self.next_inode, path)
        self.next_inode += 1
        st = os.lstat(self.real(path))
        if stat.S_ISREG(st.st_mode):
            node.fd = os.open(self.real(path), os.O_RDWR | os.O_CLOEXEC)
            node.size = node.durable_size = st.st_size
        self.nodes[node.inode] = node
        self.by_path[path] = node.inode
        return node

    def attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        st = os.fstat(node.fd) if node.fd >= 0 else os.lstat(self.real(node.path))
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = node.inode
        entry.generation = 0
        entry.entry_timeout = 0
        entry.attr_timeout = 0
        entry.st_mode = st.st_mode
        entry.st_nlink = st.st_nlink
        entry.st_uid = st.st_uid
        entry.st_gid = st.st_gid
        entry.st_rdev = 0
        entry.st_size = node.size if node.fd >= 0 else st.st_size
        entry.st_blksize = PAGE
        entry.st_blocks = st.st_blocks + len(node.pages) * (PAGE // 512)
        entry.st_atime_ns = st.st_atime_ns
        entry.st_mtime_ns = st.st_mtime_ns
        entry.st_ctime_ns = st.st_ctime_ns
        return entry

    def check(self, op: str, node: Node, start: int, end: int) -> None:
        for fault in self.faults:
            if fault.hits(op, node, start, end):
                raise FUSEError(fault.err)

    def durable_page(self, node: Node, index: int) -> bytearray:
        page = bytearray(PAGE)
        if index * PAGE < node.durable_size:
            data = os.pread(node.fd, PAGE, index * PAGE)
            page[: len(data)] = data
        return page

    def sync(self, node: Node) -> None:
        for index in sorted(node.pages):
            start = index * PAGE
            if start < node.size:
                os.pwrite(node.fd, node.pages[index][: node.size - start], start)
        if os.fstat(node.fd).st_size != node.size:
            os.ftruncate(node.fd, node.size)
        node.pages.clear()
        node.durable_size = node.size

    # -- power ---------------------------------------------------------------------------
    def cut(self, tear_seed: int | None = None) -> dict[str, int]:
        rng = random.Random(tear_seed)
        dropped = kept = 0
        for node in self.nodes.values():
            if node.fd < 0:
                continue
            if tear_seed is not None:
                end = node.durable_size
                for index, page in sorted(node.pages.items()):
                    base = self.durable_page(node, index)
                    for s in range(0, PAGE, SECTOR):
                        at = index * PAGE + s
                        if at >= node.size or page[s : s + SECTOR] == base[s : s + SECTOR]:
                            continue
                        if rng.random() < 0.5:
                            length = min(SECTOR, node.size - at)
                            os.pwrite(node.fd, page[s : s + length], at)
                            end = max(end, at + length)
                            kept += 1
                        else:
                            dropped += 1
                node.durable_size = end
            else:
                dropped += sum(1 for _ in node.pages) * (PAGE // SECTOR)
            node.pages.clear()
            if os.fstat(node.fd).st_size != node.durable_size:
                os.ftruncate(node.fd, node.durable_size)
            node.size = node.durable_size
        return {"sectors_dropped": dropped, "sectors_kept": kept}

    # -- file system operations ------------------------------------------------------------
    async def lookup(self, parent_inode, name, ctx=None):
        path = self.child(parent_inode, name)
        if name in (b".", b".."):
            raise FUSEError(errno.ENOENT)
        try:
            node = self.node_for(path)
        except FileNotFoundError:
            raise FUSEError(errno.ENOENT) from None
        return self.attrs(node)

    async def getattr(self, inode, ctx=None):
        return self.attrs(self.nodes[inode])

    async def setattr(self, inode, attr, fields, fh, ctx):
        node = self.nodes[inode]
        if fields.update_size:
            if node.fd < 0:
                raise FUSEError(errno.EISDIR)
            size = attr.st_size
            os.ftruncate(node.fd, size)
            node.size = node.durable_size = size
            for index in [i for i in node.pages if i * PAGE >= size]:
                del node.pages[index]
            last = size // PAGE
            if last in node.pages:
                node.pages[last][size % PAGE :] = bytes(PAGE - size % PAGE)
        if fields.update_mode:
            os.chmod(self.real(node.path), stat.S_IMODE(attr.st_mode))
        if fields.update_atime or fields.update_mtime:
            st = os.lstat(self.real(node.path))
            atime = attr.st_atime_ns if fields.update_atime else st.st_atime_ns
            mtime = attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns
            os.utime(self.real(node.path), ns=(atime, mtime))
        return self.attrs(node)

    async def mkdir(self, parent_inode, name, mode, ctx):
        path = self.child(parent_inode, name)
        try:
            os.mkdir(self.real(path), stat.S_IMODE(mode))
        except OSError as err:
            raise FUSEError(err.errno) from None
        return self.attrs(self.node_for(path))

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        # The daemon binds its admin socket in the state directory.
        path = self.child(parent_inode, name)
        try:
            os.mknod(self.real(path), mode, rdev)
        except OSError as err:
            raise FUSEError(err.errno) from None
        return self.attrs(self.node_for(path))

    async def rmdir(self, parent_inode, name, ctx):
        path = self.child(parent_inode, name)
        try:
            os.rmdir(self.real(path))
        except OSError as err:
            raise FUSEError(err.errno) from None
        self.by_path.pop(path, None)

    async def unlink(self, parent_inode, name, ctx):
        path = self.child(parent_inode, name)
        try:
            os.unlink(self.real(path))
        except OSError as err:
            raise FUSEError(err.errno) from None
        inode = self.by_path.pop(path, None)
        if inode is not None:
            self.nodes[inode].unlinked = True

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        old = self.child(parent_inode_old, name_old)
        new = self.child(parent_inode_new, name_new)
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise FUSEError(errno.EINVAL)
        if flags & pyfuse3.RENAME_NOREPLACE and os.path.lexists(self.real(new)):
            raise FUSEError(errno.EEXIST)
        try:
            os.rename(self.real(old), self.real(new))
        except OSError as err:
            raise FUSEError(err.errno) from None
        displaced = self.by_path.pop(new, None)
        if displaced is not None:
            self.nodes[displaced].unlinked = True
        for path in [p for p in self.by_path if p == old or p.startswith(old + "/")]:
            inode = self.by_path.pop(path)
            moved = new + path[len(old) :]
            self.nodes[inode].path = moved
            self.by_path[moved] = inode

    async def opendir(self, inode, ctx):
        return inode

    async def readdir(self, fh, start_id, token):
        base = self.nodes[fh].path
        names = sorted(os.listdir(self.real(base) if base else self.disk))
        for i, name in enumerate(names[start_id:], start_id):
            path = f"{base}/{name}" if base else name
            try:
                node = self.node_for(path)
            except FileNotFoundError:
                continue
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self.attrs(node), i + 1):
                break

    async def releasedir(self, fh):
        pass

    async def fsyncdir(self, fh, datasync):
        pass

    async def create(self, parent_inode, name, mode, flags, ctx):
        path = self.child(parent_inode, name)
        extra = flags & (os.O_EXCL | os.O_TRUNC)
        try:
            fd = os.open(self.real(path), os.O_RDWR | os.O_CREAT | extra, stat.S_IMODE(mode))
        except OSError as err:
            raise FUSEError(err.errno) from None
        os.close(fd)
        node = self.node_for(path)
        if flags & os.O_TRUNC:
            node.pages.clear()
            node.size = node.durable_size = 0
        return pyfuse3.FileInfo(fh=node.inode, keep_cache=False), self.attrs(node)

    async def open(self, inode, flags, ctx):
        node = self.nodes[inode]
        if flags & os.O_TRUNC:
            os.ftruncate(node.fd, 0)
            node.pages.clear()
            node.size = node.durable_size = 0
        return pyfuse3.FileInfo(fh=inode, keep_cache=False)

    async def read(self, fh, off, size):
        node = self.nodes[fh]
        end = min(off + size, node.size)
        if off >= end:
            return b""
        self.check("read", node, off, end)
        out = bytearray(end - off)
        if off < node.durable_size:
            data = os.pread(node.fd, min(end, node.durable_size) - off, off)
            out[: len(data)] = data
        if node.pages:
            for index in range(off // PAGE, (end - 1) // PAGE + 1):
                page = node.pages.get(index)
                if page is None:
                    continue
                start = max(off, index * PAGE)
                stop = min(end, (index + 1) * PAGE)
                out[start - off : stop - off] = page[start - index * PAGE : stop - index * PAGE]
        return bytes(out)

    async def write(self, fh, off, buf):
        node = self.nodes[fh]
        end = off + len(buf)
        self.check("write", node, off, end)
        view = memoryview(buf)
        pos = off
        while pos < end:
            index = pos // PAGE
            page = node.pages.get(index)
            if page is None:
                page = node.pages[index] = self.durable_page(node, index)
            start = pos - index * PAGE
            n = min(PAGE - start, end - pos)
            page[start : start + n] = view[pos - off : pos - off + n]
            pos += n
        node.size = max(node.size, end)
        return len(buf)

    async def fsync(self, fh, datasync):
        node = self.nodes[fh]
        self.check("fsync", node, 0, max(node.size, 1))
        if self.lying:
            return
        if node.pages or node.size != node.durable_size:
            self.synced_writes += 1
        self.sync(node)

    async def flush(self, fh):
        pass

    async def release(self, fh):
        pass

    async def forget(self, inode_list):
        pass

    async def statfs(self, ctx):
        st = os.statvfs(self.disk)
        out = pyfuse3.StatvfsData()
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail"):
            setattr(out, name, getattr(st, name))
        for name in ("f_files", "f_ffree", "f_favail", "f_namemax"):
            setattr(out, name, getattr(st, name))
        return out

    # -- control -------------------------------------------------------------------------
    def command(self, request: dict) -> dict:
        cmd = request.get("cmd")
        if cmd == "cut":
            return self.cut()
        if cmd == "tear":
            return self.cut(int(request.get("seed", 0)))
        if cmd == "fault":
            op = request["op"]
            if op not in OPS:
                raise ValueError(f"op must be one of {OPS}")
            err = getattr(errno, request.get("errno", "EIO"))
            self.faults.append(
                Fault(op, request["path"], int(request["start"]), int(request["end"]), err)
            )
            return {"faults": len(self.faults)}
        if cmd == "lie":
            self.lying = bool(request.get("on", True))
            return {"lying": self.lying}
        if cmd == "clear":
            self.faults.clear()
            return {"faults": 0}
        if cmd == "stats":
            dirty = sum(len(n.pages) for n in self.nodes.values())
            return {"dirty_pages": dirty, "fsyncs_with_data": self.synced_writes}
        raise ValueError(f"unknown command {cmd!r}")


async def serve_control(fs: FaultFS, path: str, nursery: trio.Nursery) -> None:
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen(8)
    listener = trio.SocketListener(sock)

    async def handle(stream: trio.SocketStream) -> None:
        buf = b""
        async with stream:
            while True:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    request = json.loads(line)
                    if request.get("cmd") == "exit":
                        await stream.send_all(b'{"ok": true}\n')
                        nursery.cancel_scope.cancel()
                        return
                    try:
                        answer = {"ok": True, **fs.command(request)}
                    except Exception as exc:  # a bad command is answered, not fatal
                        answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                    await stream.send_all(json.dumps(answer).encode() + b"\n")

    await trio.serve_listeners(handle, [listener])


async def run(fs: FaultFS, control: str) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pyfuse3.main)
        nursery.start_soon(serve_control, fs, control, nursery)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def main() -> None:
    disk, mountpoint, control = sys.argv[1:4]
    fs = FaultFS(os.path.abspath(disk))
    options = set(pyfuse3.default_options)
    options.add("fsname=faultfs")
    options.discard("default_permissions")
    pyfuse3.init(fs, mountpoint, options)
    try:
        trio.run(run, fs, control)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
