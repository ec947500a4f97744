"""Cap processes at a fixed share of one CPU core with a Linux cgroup CPU quota (CFS bandwidth control), to model
servers that each have a core of their own on a machine with too few cores. Needs root, in practice.

``CpuCap(pids, percent=..., period_us=...)`` puts each pid's whole process in a new group of its own (cgroup v1
when a hierarchy has the ``cpu`` controller, else cgroup v2's ``cpu.max``) with a quota of ``period_us * percent
/ 100`` µs per period. Entry raises ``CpuCapUnavailable`` (after undoing what it did) when that cannot be done;
exit, also after an error, moves every process in the groups back where it was and removes the groups.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

MIN_QUOTA_US = 1000  # the kernel refuses a CFS quota below 1 ms per period
SHORTEST_PERIOD_US = 10_000  # short periods keep each throttling stall short
GROUP_PREFIX = "hybridcache-bench"


class CpuCapUnavailable(RuntimeError):
    """CPU-quota groups cannot be created on this machine or by this user; the message says why."""


@dataclass(frozen=True)
class Throttling:
    """Cumulative CFS figures of one group (``cpu.stat``)."""

    periods: int
    throttled_periods: int


@dataclass(frozen=True)
class _Hierarchy:
    version: int  # 1 or 2
    mount: Path
    mount_root: str  # the path inside the hierarchy that ``mount`` shows

    def directory_of(self, pid: int) -> Path | None:
        """The directory of the group ``pid`` is in, or None if it is not visible under the mount."""
        try:
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        except OSError:
            return None
        for line in lines:
            _, controllers, path = line.split(":", 2)
            if (controllers != "") if self.version == 2 else "cpu" not in controllers.split(","):
                continue
            if self.mount_root != "/":
                if not (path == self.mount_root or path.startswith(self.mount_root + "/")):
                    return None
                path = path[len(self.mount_root) :]
            directory = self.mount / path.lstrip("/")
            return directory if directory.is_dir() else None
        return None

    def set_quota(self, group: Path, *, period_us: int, quota_us: int) -> None:
        if self.version == 1:
            (group / "cpu.cfs_period_us").write_text(str(period_us))
            (group / "cpu.cfs_quota_us").write_text(str(quota_us))
        else:
            (group / "cpu.max").write_text(f"{quota_us} {period_us}")

    def read_throttling(self, group: Path) -> Throttling:
        fields = dict(line.split(" ", 1) for line in (group / "cpu.stat").read_text().splitlines() if " " in line)
        return Throttling(int(fields.get("nr_periods", 0)), int(fields.get("nr_throttled", 0)))


def _find_hierarchy() -> _Hierarchy:
    """The cgroup hierarchy with the cpu controller; CpuCapUnavailable if there is none."""
    try:
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError as exc:
        raise CpuCapUnavailable(f"cannot read /proc/self/mountinfo ({exc})") from exc
    cgroup2 = None
    for line in mounts:
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        if tail[0] == "cgroup" and "cpu" in tail[2].split(","):
            return _Hierarchy(1, Path(fields[4]), fields[3])
        if tail[0] == "cgroup2" and cgroup2 is None:
            cgroup2 = _Hierarchy(2, Path(fields[4]), fields[3])
    if cgroup2 is None:
        raise CpuCapUnavailable("no cgroup v1 hierarchy with the cpu controller and no cgroup2 mount")
    try:
        controllers = (cgroup2.mount / "cgroup.controllers").read_text().split()
    except OSError as exc:
        raise CpuCapUnavailable(f"cgroup2 at {cgroup2.mount}: cannot read cgroup.controllers ({exc})") from exc
    if "cpu" not in controllers:
        raise CpuCapUnavailable(f"no cgroup v1 cpu hierarchy, and the cgroup2 mount at {cgroup2.mount} lacks cpu")
    return cgroup2


def period_for(percent: float) -> int:
    """The shortest period (whole ms, at least ``SHORTEST_PERIOD_US``) whose quota at ``percent`` reaches 1 ms."""
    if not 0 < percent <= 100:
        raise ValueError(f"percent must be in (0, 100], not {percent}")
    return max(SHORTEST_PERIOD_US, math.ceil(MIN_QUOTA_US * 100 / percent / 1000) * 1000)


class CpuCap:
    """Each of ``pids`` in a group of its own, capped at ``percent`` of one core (see the module docstring)."""

    def __init__(self, pids: Iterable[int], *, percent: float, period_us: int) -> None:
        self.pids, self.percent, self.period_us = tuple(pids), percent, period_us
        self.quota_us = round(period_us * percent / 100)
        if self.quota_us < MIN_QUOTA_US:
            raise ValueError(f"{percent}% of {period_us} µs is below the kernel's {MIN_QUOTA_US} µs minimum quota")
        self._hierarchy: _Hierarchy | None = None
        self._groups: dict[int, Path] = {}  # pid -> its group
        self._origins: dict[int, Path] = {}  # pid -> the group it was in
        self._parent: Path | None = None

    @property
    def hierarchy(self) -> str:
        return f"cgroup v{self._hierarchy.version}" if self._hierarchy else "not entered"

    def throttling(self) -> dict[int, Throttling]:
        """Per capped pid: its group's cumulative CFS periods and throttled periods."""
        assert self._hierarchy is not None, "CpuCap not entered"
        return {pid: self._hierarchy.read_throttling(group) for pid, group in self._groups.items()}

    def __enter__(self) -> CpuCap:
        found = self._hierarchy = _find_hierarchy()
        # cgroup v2: under the root, exempt from the "no processes in inner groups" rule.
        self._parent = found.mount if found.version == 2 else found.directory_of(os.getpid()) or found.mount
        try:
            if found.version == 2 and "cpu" not in (found.mount / "cgroup.subtree_control").read_text().split():
                (found.mount / "cgroup.subtree_control").write_text("+cpu")
            for index, pid in enumerate(self.pids):
                group = self._parent / f"{GROUP_PREFIX}-{os.getpid()}-{index}"
                group.mkdir()
                self._groups[pid] = group
                found.set_quota(group, period_us=self.period_us, quota_us=self.quota_us)
                self._origins[pid] = found.directory_of(pid) or self._parent
                (group / "cgroup.procs").write_text(str(pid))
        except OSError as exc:
            leftovers = self._release()
            where = f" (and could not remove {', '.join(leftovers)})" if leftovers else ""
            raise CpuCapUnavailable(
                f"{self.hierarchy} at {found.mount}: cannot set a CPU quota: {exc.__class__.__name__}: {exc}{where}"
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
        for pid, group in list(self._groups.items()):
            for attempt in range(20):  # a process being moved or exiting can make rmdir fail for a moment
                try:
                    for member in (group / "cgroup.procs").read_text().split():
                        origin = self._origins.get(int(member), self._parent)
                        if origin is None or not origin.is_dir():
                            origin = self._parent
                        assert origin is not None
                        with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
                            (origin / "cgroup.procs").write_text(member)
                    group.rmdir()
                    break
                except FileNotFoundError:
                    break  # already gone
                except OSError:
                    if attempt == 19:
                        leftovers.append(str(group))
                    time.sleep(0.05)
            self._groups.pop(pid, None)
        return leftovers
