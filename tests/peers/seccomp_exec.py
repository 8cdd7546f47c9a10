#!/usr/bin/python3
"""Runs a command under a seccomp filter that refuses io_uring, as Docker's
default seccomp profile does (moby PR 46762): io_uring_setup, io_uring_enter
and io_uring_register fail with EPERM, every other system call is allowed.

Usage: seccomp_exec.py [--check] -- COMMAND [ARGS...]

--check only proves the filter works here: it loads the filter, then asks the
kernel for a ring (io_uring_setup) and exits 0 only when that fails with EPERM.

Needs libseccomp's Python binding (Debian: python3-seccomp).
"""
import ctypes
import errno
import os
import sys

import seccomp

IO_URING_SYSCALLS = ("io_uring_setup", "io_uring_enter", "io_uring_register")


def load_filter():
    flt = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for name in IO_URING_SYSCALLS:
        flt.add_rule(seccomp.ERRNO(errno.EPERM), name)
    flt.load()


def io_uring_setup_errno():
    libc = ctypes.CDLL(None, use_errno=True)
    nr = seccomp.resolve_syscall(seccomp.Arch.NATIVE, "io_uring_setup")
    params = ctypes.create_string_buffer(120)  # struct io_uring_params
    fd = libc.syscall(nr, 8, params)
    if fd >= 0:
        os.close(fd)
        return 0
    return ctypes.get_errno()


def main(argv):
    check = "--check" in argv[: argv.index("--")] if "--" in argv else "--check" in argv
    command = argv[argv.index("--") + 1 :] if "--" in argv else []
    load_filter()
    if check:
        got = io_uring_setup_errno()
        if got != errno.EPERM:
            print(f"io_uring_setup gave errno {got}, not EPERM", file=sys.stderr)
            return 1
        print("io_uring_setup refused with EPERM")
        return 0
    if not command:
        print(__doc__, file=sys.stderr)
        return 2
    os.execvp(command[0], command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
