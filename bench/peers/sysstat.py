"""CPU accounting from ``/proc``: per process tree, and how busy the whole machine was.

A :class:`LoadWindow` brackets one measured phase. It reads the machine's busy and steal
time from ``/proc/stat`` and the CPU time of every process in the runner's tree (the
runner, its workers, the service processes it started and their children) from
``/proc/<pid>/stat``. ``other_cores`` = machine busy time not spent by that tree, per
second of wall time: what other processes took while we measured. Named groups (the
service processes) are measured in nanoseconds from ``/proc/<pid>/task/*/schedstat``
(the time each thread ran), since clock ticks (10 ms) cannot resolve the fraction of a
percent an idle service uses in a few seconds.
"""

from __future__ import annotations

import os
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def machine_jiffies() -> tuple[int, int, int]:
    """``(busy, steal, total)`` jiffies summed over all CPUs since boot."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    vals = [int(x) for x in fields[:8]] + [0] * max(0, 8 - len(fields))
    user, nice, system, idle, iowait, irq, softirq, steal = vals[:8]
    busy = user + nice + system + irq + softirq
    return busy, steal, busy + idle + iowait + steal


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    # comm may hold spaces and parentheses: split after the last ')'
    return data[data.rfind(")") + 2 :].split()


def process_cpu_jiffies(pid: int) -> int | None:
    """utime + stime of a process (all its threads), or None if it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    return int(fields[11]) + int(fields[12])


def process_cpu_ns(pid: int) -> int | None:
    """Nanoseconds the live threads of a process have run (schedstat), or None if gone."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    total = 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # the thread ended meanwhile
    return total


def _parent_map() -> dict[int, int]:
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is not None:
            out[int(name)] = int(fields[1])
    return out


def process_name(pid: int) -> str:
    """The process's short name (``/proc/<pid>/comm``), or ``pid N`` if it is gone."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return f"pid {pid}"


def descendants(roots: list[int] | set[int], include_roots: bool = True) -> set[int]:
    """Every live process below ``roots`` (and the roots themselves)."""
    parents = _parent_map()
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    out = set()
    stack = [r for r in roots if r in parents]
    while stack:
        pid = stack.pop()
        if pid in out:
            continue
        out.add(pid)
        stack.extend(children.get(pid, ()))
    if not include_roots:
        out -= set(roots)
    return out


def tree_cpu(pids: set[int], measure=process_cpu_jiffies) -> dict[int, int]:
    """CPU time of each pid still alive: jiffies, or what ``measure`` gives (e.g.
    :func:`process_cpu_ns`)."""
    out = {}
    for pid in pids:
        v = measure(pid)
        if v is not None:
            out[pid] = v
    return out


class LoadWindow:
    """Machine load and our own CPU over one interval.

    Parameters
    ----------
    root : int
        pid whose process tree counts as "ours" (the runner).
    groups : dict[str, list[int]]
        Named sets of root pids (e.g. ``{"services": [...]}``) whose trees' CPU is
        reported separately.
    """

    def __init__(self, root: int, groups: dict[str, list[int]] | None = None) -> None:
        self.root = root
        self.groups = groups or {}

    def start(self) -> None:
        """Take the first sample."""
        self._t0 = time.monotonic()
        self._m0 = machine_jiffies()
        self._ours0 = tree_cpu(descendants([self.root]))
        self._g0 = {k: tree_cpu(descendants(v), process_cpu_ns) for k, v in self.groups.items()}

    def stop(self) -> dict:
        """Take the second sample and return the window's numbers.

        Returns
        -------
        dict
            ``elapsed_s``, ``machine_cores`` (busy CPUs on average), ``ours_cores``,
            ``other_cores``, ``steal_frac`` (share of all CPU time stolen by the
            hypervisor) and ``{group}_cpu_s`` for each group.
        """
        elapsed = max(1e-9, time.monotonic() - self._t0)
        m1 = machine_jiffies()
        ours1 = tree_cpu(descendants([self.root]))
        out = {"elapsed_s": elapsed}
        busy = (m1[0] - self._m0[0]) / CLK_TCK
        steal = (m1[1] - self._m0[1]) / CLK_TCK
        total = max(1e-9, (m1[2] - self._m0[2]) / CLK_TCK)
        ours = sum(j - self._ours0.get(pid, 0) for pid, j in ours1.items()) / CLK_TCK
        out["machine_cores"] = busy / elapsed
        out["ours_cores"] = ours / elapsed
        out["other_cores"] = max(0.0, busy - ours) / elapsed
        out["steal_frac"] = steal / total
        for name, roots in self.groups.items():
            g1 = tree_cpu(descendants(roots), process_cpu_ns)
            g0 = self._g0.get(name, {})
            out[f"{name}_cpu_s"] = sum(max(0, ns - g0.get(pid, 0)) for pid, ns in g1.items()) / 1e9
        return out


def sample_machine(seconds: float) -> dict:
    """How busy the machine is right now (all processes), over ``seconds``."""
    t0 = time.monotonic()
    m0 = machine_jiffies()
    time.sleep(seconds)
    m1 = machine_jiffies()
    elapsed = time.monotonic() - t0
    total = max(1e-9, (m1[2] - m0[2]) / CLK_TCK)
    return {
        "elapsed_s": elapsed,
        "machine_cores": (m1[0] - m0[0]) / CLK_TCK / elapsed,
        "steal_frac": (m1[1] - m0[1]) / CLK_TCK / total,
    }
