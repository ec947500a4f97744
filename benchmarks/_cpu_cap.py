"""Cap processes at a share of one CPU core with a Linux cgroup v1 ``cpu`` controller quota, modelling servers
with a core each on a machine with too few. Needs root; undone on exit.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

MIN_QUOTA_US = 1000  # the kernel refuses a CFS quota below 1 ms per period
SHORTEST_PERIOD_US = 10_000  # short periods keep each throttling stall short
#: Per capped pid: its group's cumulative CFS periods and throttled periods (``cpu.stat``).
Throttling = Callable[[], dict[int, tuple[int, int]]]


class CpuCapUnavailable(RuntimeError):
    """CPU-quota groups cannot be created on this machine or by this user; the message says why."""


def period_and_quota(percent: float) -> tuple[int, int]:
    """The shortest period (whole ms, at least ``SHORTEST_PERIOD_US``) whose quota at ``percent`` of one core
    reaches the kernel's 1 ms minimum, and that quota, in µs."""
    if not 0 < percent <= 100:
        raise ValueError(f"percent must be in (0, 100], not {percent}")
    period = max(SHORTEST_PERIOD_US, math.ceil(MIN_QUOTA_US * 100 / percent / 1000) * 1000)
    return period, round(period * percent / 100)


def _hierarchy() -> tuple[Path, Path]:
    """The mount point of the cgroup v1 hierarchy with the cpu controller, and this process's group in it (the
    mount point if that group is not visible under it)."""
    try:
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
        own_groups = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError as exc:
        raise CpuCapUnavailable(f"cannot read /proc/self ({exc})") from exc
    for line in mounts:
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) >= 5 and len(tail) >= 3 and tail[0] == "cgroup" and "cpu" in tail[2].split(","):
            mount, root = Path(fields[4]), fields[3].rstrip("/")
            break
    else:
        raise CpuCapUnavailable("no cgroup v1 hierarchy with the cpu controller (cgroup v2 is not supported)")
    for line in own_groups:
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(",") and (path + "/").startswith(root + "/"):
            group = mount / path[len(root) :].lstrip("/")
            return mount, group if group.is_dir() else mount
    return mount, mount


@contextlib.contextmanager
def cpu_cap(pids: Iterable[int], percent: float) -> Iterator[Throttling]:
    """Each of ``pids`` (children of this process) in a cpu group of its own under this process's group, capped at
    ``percent`` of one core (``period_and_quota``); yields a reader of their throttling. Raises
    ``CpuCapUnavailable`` (after undoing what it did) when that cannot be done; on exit the processes go back to
    this process's group and the groups are removed."""
    period, quota = period_and_quota(percent)
    mount, parent = _hierarchy()
    groups: dict[int, Path] = {}
    try:
        for index, pid in enumerate(pids):
            group = groups[pid] = parent / f"hybridcache-bench-{os.getpid()}-{index}"
            group.mkdir()
            (group / "cpu.cfs_period_us").write_text(str(period))
            (group / "cpu.cfs_quota_us").write_text(str(quota))
            (group / "cgroup.procs").write_text(str(pid))
    except OSError as exc:
        leftovers = _release(groups.values(), parent)
        where = f" (and could not remove {', '.join(leftovers)})" if leftovers else ""
        message = f"cgroup v1 at {mount}: cannot set a CPU quota: {exc.__class__.__name__}: {exc}{where}"
        raise CpuCapUnavailable(message) from exc
    try:
        yield lambda: {pid: _throttling(group) for pid, group in groups.items()}
    finally:
        if leftovers := _release(groups.values(), parent):
            raise RuntimeError(f"CPU-cap groups left behind: {', '.join(leftovers)}")


def _throttling(group: Path) -> tuple[int, int]:
    fields = dict(line.split(" ", 1) for line in (group / "cpu.stat").read_text().splitlines() if " " in line)
    return int(fields.get("nr_periods", 0)), int(fields.get("nr_throttled", 0))


def _release(groups: Iterable[Path], parent: Path) -> list[str]:
    """Move every process out of ``groups`` into ``parent`` and remove them; the groups that could not be removed."""
    leftovers = []
    for group in groups:
        for attempt in range(20):  # a process being moved or exiting can make rmdir fail for a moment
            try:
                for member in (group / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
                        (parent / "cgroup.procs").write_text(member)
                group.rmdir()
                break
            except FileNotFoundError:
                break  # already gone (or never made)
            except OSError:
                if attempt == 19:
                    leftovers.append(str(group))
                time.sleep(0.05)
    return leftovers
