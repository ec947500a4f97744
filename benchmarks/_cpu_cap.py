"""Cap processes at a share of one CPU core with a Linux cgroup v1 ``cpu`` controller quota, modelling servers
with a core each on a machine with too few. Needs root; undone on exit.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

MIN_QUOTA_US = 1000  # the kernel refuses a CFS quota below 1 ms per period
SHORTEST_PERIOD_US = 10_000  # short periods keep each throttling stall short


class CpuCapUnavailable(RuntimeError):
    """CPU-quota groups cannot be created on this machine or by this user; the message says why."""


def _hierarchy() -> tuple[Path, str]:
    """Mount point and root path (inside the hierarchy) of the cgroup v1 hierarchy with the cpu controller."""
    try:
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError as exc:
        raise CpuCapUnavailable(f"cannot read /proc/self/mountinfo ({exc})") from exc
    for line in mounts:
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) >= 5 and len(tail) >= 3 and tail[0] == "cgroup" and "cpu" in tail[2].split(","):
            return Path(fields[4]), fields[3]
    raise CpuCapUnavailable("no cgroup v1 hierarchy with the cpu controller (cgroup v2 is not supported)")


def period_for(percent: float) -> int:
    """The shortest period (whole ms, at least ``SHORTEST_PERIOD_US``) whose quota at ``percent`` reaches 1 ms."""
    if not 0 < percent <= 100:
        raise ValueError(f"percent must be in (0, 100], not {percent}")
    return max(SHORTEST_PERIOD_US, math.ceil(MIN_QUOTA_US * 100 / percent / 1000) * 1000)


class CpuCap:
    """Each of ``pids`` (children of this process, in its cpu group) in a group of its own under that group, capped
    at ``percent`` of one core. Entry raises ``CpuCapUnavailable`` (after undoing what it did) when that cannot be
    done; exit moves the processes back to this process's group and removes the groups."""

    def __init__(self, pids: Iterable[int], *, percent: float, period_us: int) -> None:
        self.pids, self.percent, self.period_us = tuple(pids), percent, period_us
        self.quota_us = round(period_us * percent / 100)
        if self.quota_us < MIN_QUOTA_US:
            raise ValueError(f"{percent}% of {period_us} µs is below the kernel's {MIN_QUOTA_US} µs minimum quota")
        self.mount, self.root = Path("/"), "/"
        self._groups: dict[int, Path] = {}  # pid -> its group
        self._parent = Path("/")  # this process's group

    def throttling(self) -> dict[int, tuple[int, int]]:
        """Per capped pid: its group's cumulative CFS periods and throttled periods (``cpu.stat``)."""
        out = {}
        for pid, group in self._groups.items():
            fields = dict(line.split(" ", 1) for line in (group / "cpu.stat").read_text().splitlines() if " " in line)
            out[pid] = int(fields.get("nr_periods", 0)), int(fields.get("nr_throttled", 0))
        return out

    def _own_group(self) -> Path:
        """The directory of this process's cpu group, or the mount's root if it is not visible under the mount."""
        with contextlib.suppress(OSError):
            for line in Path("/proc/self/cgroup").read_text().splitlines():
                _, controllers, path = line.split(":", 2)
                if "cpu" in controllers.split(",") and (path + "/").startswith(self.root.rstrip("/") + "/"):
                    directory = self.mount / path[len(self.root.rstrip("/")) :].lstrip("/")
                    return directory if directory.is_dir() else self.mount
        return self.mount

    def __enter__(self) -> CpuCap:
        self.mount, self.root = _hierarchy()
        self._parent = self._own_group()
        try:
            for index, pid in enumerate(self.pids):
                group = self._groups[pid] = self._parent / f"hybridcache-bench-{os.getpid()}-{index}"
                group.mkdir()
                (group / "cpu.cfs_period_us").write_text(str(self.period_us))
                (group / "cpu.cfs_quota_us").write_text(str(self.quota_us))
                (group / "cgroup.procs").write_text(str(pid))
        except OSError as exc:
            leftovers = self._release()
            where = f" (and could not remove {', '.join(leftovers)})" if leftovers else ""
            raise CpuCapUnavailable(
                f"cgroup v1 at {self.mount}: cannot set a CPU quota: {exc.__class__.__name__}: {exc}{where}"
            ) from exc
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if leftovers := self._release():
            message = f"CPU-cap groups left behind: {', '.join(leftovers)}"
            if exc_type is None:
                raise RuntimeError(message)
            warnings.warn(message, RuntimeWarning, stacklevel=2)

    def _release(self) -> list[str]:
        """Move every process out of the groups and remove them; the groups that could not be removed."""
        leftovers = []
        for group in self._groups.values():
            for attempt in range(20):  # a process being moved or exiting can make rmdir fail for a moment
                try:
                    for member in (group / "cgroup.procs").read_text().split():
                        with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
                            (self._parent / "cgroup.procs").write_text(member)
                    group.rmdir()
                    break
                except FileNotFoundError:
                    break  # already gone (or never made)
                except OSError:
                    if attempt == 19:
                        leftovers.append(str(group))
                    time.sleep(0.05)
        self._groups.clear()
        return leftovers
