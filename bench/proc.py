"""What /proc says about a process: CPU time, resident memory, threads (Linux only)."""

from __future__ import annotations

import os
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def status(pid: int) -> dict[str, int]:
    """Resident memory (`VmRSS`, kB) and thread count (`Threads`) of `pid`."""
    fields = {}
    with open(f"/proc/{pid}/status") as lines:
        for line in lines:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "Threads"):
                fields[key] = int(value.split()[0])
    return fields


def rss_kb(pid: int) -> int:
    """Resident memory of `pid` in kB."""
    return status(pid).get("VmRSS", 0)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by `pid` (0 if it is gone)."""
    try:
        fields = _stat(pid)
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def postmaster_pid(data_dir: Path) -> int:
    """The PID of the PostgreSQL server running on `data_dir` (its postmaster.pid's first line)."""
    return int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of `pid` and all its descendants: those alive, and those that have ended
    (the kernel adds those to their parent's count once it has waited for them), so that a
    PostgreSQL backend that exits between two readings still counts. 0 if `pid` is gone."""
    parents: dict[int, int] = {}
    seconds: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat(int(entry.name))
        except OSError:
            continue  # ended meanwhile
        child = int(entry.name)
        parents[child] = int(fields[1])
        seconds[child] = sum(int(fields[i]) for i in (11, 12, 13, 14)) / _TICK
    if pid not in seconds:
        return 0.0
    children: dict[int, list[int]] = {}
    for child, parent in parents.items():
        children.setdefault(parent, []).append(child)
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        total += seconds[current]
        pending.extend(children.get(current, ()))
    return total


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat's fields after the command name: state, ppid, …, utime at index 11,
    stime 12, cutime 13 and cstime 14 (the children it has waited for)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
