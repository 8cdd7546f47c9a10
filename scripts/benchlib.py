"""Helpers shared by the benchmark scripts (bench-swarm.py, bench-scale.py):
sizes, loopback ports, /proc readings of a process by pid, and the lines that
say what machine and which tools a result came from. Standard library only;
Debian's /usr/bin/python3 runs it (python3-libtorrent is built for it)."""
import os
import platform
import socket
import subprocess

CLK_TCK = os.sysconf("SC_CLK_TCK")


def parse_size(text):
    """`1G`, `256M`, `32KiB`, `1000` -> bytes (binary units)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().rstrip("IB")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def free_port():
    """A port free for both TCP and UDP on 127.0.0.1 (peers listen on both),
    or None after 64 tries."""
    for _ in range(64):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
    return None


def proc_cpu_s(pid):
    """user+sys CPU seconds of a live process (/proc/PID/stat, clock ticks),
    or None once it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def tool_version(cmd):
    """The first line a tool prints for its version, or `?`."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return "?"


def machine():
    """CPU model, cores, RAM and kernel, for the line above every result."""
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    return "%s, %d cores, %.0f GiB RAM, Linux %s" % (
        model, os.cpu_count(), mem_kib / (1 << 20), platform.release())


def ringbit_missing(binary, sub):
    """None when `binary sub --help` runs, else why the ringbit side cannot run."""
    if not os.access(binary, os.X_OK):
        return "no ringbit binary at %s (cargo build --release, or --ringbit PATH)" % binary
    try:
        r = subprocess.run([binary, sub, "--help"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return "%s %s --help failed: %s" % (binary, sub, e)
    if r.returncode != 0:
        return "`ringbit %s` is not implemented in %s" % (sub, binary)
    return None
