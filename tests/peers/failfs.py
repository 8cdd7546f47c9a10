#!/usr/bin/python3
"""A passthrough FUSE filesystem whose fsync fails on demand (tests only).

    failfs.py ROOT MOUNTPOINT CONTROL

Mounts ROOT at MOUNTPOINT and serves it in the foreground until unmounted.
While the file CONTROL exists the filesystem is *failing*, the way a disk
whose writeback fails looks to a program on Linux:

* every write is acknowledged but its bytes are dropped (the kernel marks
  the pages of a failed writeback clean: the data is gone, the write(2) that
  put it in the page cache had succeeded);
* every fsync/fdatasync returns EIO.

Otherwise every operation passes through to ROOT. fallocate is not
implemented, so the kernel answers EOPNOTSUPP to it, as NFSv3 and many FUSE
filesystems do. Needs Debian's python3-fusepy (libfuse2) and /dev/fuse; run
as root (libfuse mounts directly, no fusermount).

Used by tests/it/durability.rs; the device-mapper targets that would do this
at the block layer are not available in every kernel these tests run on.
"""

import errno
import os
import sys

from fusepy import FUSE, FuseOSError, Operations


class FailFs(Operations):
    def __init__(self, root, control):
        self.root = os.path.realpath(root)
        self.control = control
        # Counters a test can read back (written to CONTROL + ".stats").
        self.dropped_writes = 0
        self.failed_syncs = 0

    def _path(self, path):
        return os.path.join(self.root, path.lstrip("/"))

    def _failing(self):
        return os.path.exists(self.control)

    def _stats(self):
        try:
            with open(self.control + ".stats", "w") as f:
                f.write(f"dropped_writes={self.dropped_writes}\nfailed_syncs={self.failed_syncs}\n")
        except OSError:
            pass

    # -- metadata ---------------------------------------------------------

    def access(self, path, mode):
        if not os.access(self._path(path), mode):
            raise FuseOSError(errno.EACCES)

    def chmod(self, path, mode):
        return os.chmod(self._path(path), mode)

    def chown(self, path, uid, gid):
        return os.chown(self._path(path), uid, gid)

    def getattr(self, path, fh=None):
        try:
            st = os.lstat(self._path(path))
        except OSError as e:
            raise FuseOSError(e.errno)
        keys = ("st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime", "st_nlink",
                "st_size", "st_uid", "st_blocks")
        return {k: getattr(st, k) for k in keys}

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self._path(path))

    def readlink(self, path):
        return os.readlink(self._path(path))

    def mkdir(self, path, mode):
        return os.mkdir(self._path(path), mode)

    def rmdir(self, path):
        return os.rmdir(self._path(path))

    def unlink(self, path):
        return os.unlink(self._path(path))

    def rename(self, old, new):
        return os.rename(self._path(old), self._path(new))

    def symlink(self, target, source):
        return os.symlink(source, self._path(target))

    def utimens(self, path, times=None):
        return os.utime(self._path(path), times)

    def statfs(self, path):
        st = os.statvfs(self._path(path))
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree",
                "f_files", "f_flag", "f_frsize", "f_namemax")
        return {k: getattr(st, k) for k in keys}

    # -- data -------------------------------------------------------------

    def open(self, path, flags):
        try:
            return os.open(self._path(path), flags)
        except OSError as e:
            raise FuseOSError(e.errno)

    def create(self, path, mode, fi=None):
        return os.open(self._path(path), os.O_RDWR | os.O_CREAT, mode)

    def read(self, path, size, offset, fh):
        return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        if self._failing():
            self.dropped_writes += 1
            self._stats()
            return len(data)
        return os.pwrite(fh, data, offset)

    def truncate(self, path, length, fh=None):
        os.truncate(self._path(path), length)

    def flush(self, path, fh):
        # close(2) of a descriptor: nothing to report here (the test is
        # about fsync).
        return 0

    def fsync(self, path, datasync, fh):
        if self._failing():
            self.failed_syncs += 1
            self._stats()
            raise FuseOSError(errno.EIO)
        if datasync:
            os.fdatasync(fh)
        else:
            os.fsync(fh)
        return 0

    def release(self, path, fh):
        return os.close(fh)


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    root, mountpoint, control = sys.argv[1:]
    # direct_io: every read and write reaches this process (no page cache
    # in between that could serve dropped bytes back as if they were kept).
    FUSE(FailFs(root, control), mountpoint, foreground=True, nothreads=False,
         direct_io=True, fsname="ringbit-failfs")


if __name__ == "__main__":
    main()
