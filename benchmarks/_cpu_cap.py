"""Cap processes at a fixed share of one CPU core with a Linux cgroup CPU quota (benchmark helper).

Used to model servers that each run on a core of their own on a machine that has too few cores for that: a
process capped at ``percent`` of a core gets at most ``period_us * percent / 100`` µs of CPU in every
``period_us`` window (CFS bandwidth control) and is stopped for the rest of the window once it has used them.

Contract:

- ``unavailable_reason()`` returns ``None`` when CPU-quota groups can be created here, else a sentence saying why
  not (no ``cpu`` controller mounted, not writable, ...). It creates and removes one probe group to find out.
- ``CpuCap(pids, percent=..., period_us=...)`` is a context manager. On entry it creates one new group per pid
  (``hybridcache-bench-<this pid>-<n>``, a child of the group this process is in for cgroup v1, of the cgroup2
  mount for v2), sets its period and quota, and moves the pid's whole process (every thread, via
  ``cgroup.procs``) into it: each pid gets its own budget. It raises ``CpuCapUnavailable`` if that fails, after
  undoing what it did; ``ValueError`` if the quota would be below the kernel's 1 ms minimum (see ``period_for``).
- On exit — also when the body raised, or when entry failed half-way — every process still in one of the groups
  (the pid, or a child it forked) is moved back to the group it was in before, or to the parent group if that is
  gone, and the groups are removed. If a group cannot be removed, exit raises ``RuntimeError`` naming it (only a
  ``RuntimeWarning`` if the body already raised, so that its exception is not hidden).
- ``CpuCap.throttling()`` reads each group's ``cpu.stat``: CFS periods, how many of them were throttled, and the
  seconds spent throttled, cumulative since entry.

cgroup v1 (a ``cgroup`` mount whose options include ``cpu``: ``cpu.cfs_period_us``, ``cpu.cfs_quota_us``) is used
when present; otherwise cgroup v2 (``cpu.max``) when the cgroup2 mount's ``cgroup.controllers`` lists ``cpu``
(the ``cpu`` controller is enabled in its ``cgroup.subtree_control`` if it is not yet). Needs root, in practice.
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

#: The kernel refuses a CFS quota below 1 ms per period.
MIN_QUOTA_US = 1000
#: Short periods keep each throttling stall short (a capped process waits at most period - quota).
DEFAULT_SHORTEST_PERIOD_US = 10_000
GROUP_PREFIX = "hybridcache-bench"


class CpuCapUnavailable(RuntimeError):
    """CPU-quota groups cannot be created on this machine or by this user; the message says why."""


@dataclass(frozen=True)
class Throttling:
    """Cumulative CFS bandwidth figures of one group (``cpu.stat``)."""

    periods: int
    throttled_periods: int
    throttled_seconds: float


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
            mine = controllers == "" if self.version == 2 else "cpu" in controllers.split(",")
            if not mine:
                continue
            if self.mount_root != "/" and not (path == self.mount_root or path.startswith(self.mount_root + "/")):
                return None
            relative = path[len(self.mount_root) :] if self.mount_root != "/" else path
            directory = self.mount / relative.lstrip("/")
            return directory if directory.is_dir() else None
        return None

    def parent_for_new_groups(self) -> Path:
        if self.version == 2:
            return self.mount  # the root is exempt from cgroup v2's "no processes in inner groups" rule
        return self.directory_of(os.getpid()) or self.mount

    def set_quota(self, group: Path, *, period_us: int, quota_us: int) -> None:
        if self.version == 1:
            (group / "cpu.cfs_period_us").write_text(str(period_us))
            (group / "cpu.cfs_quota_us").write_text(str(quota_us))
        else:
            (group / "cpu.max").write_text(f"{quota_us} {period_us}")

    def read_throttling(self, group: Path) -> Throttling:
        fields = {}
        for line in (group / "cpu.stat").read_text().splitlines():
            name, _, value = line.partition(" ")
            if value.strip().isdigit():
                fields[name] = int(value)
        throttled = (
            fields.get("throttled_time", 0) / 1e9 if self.version == 1 else fields.get("throttled_usec", 0) / 1e6
        )
        return Throttling(fields.get("nr_periods", 0), fields.get("nr_throttled", 0), throttled)


def _find_hierarchy() -> _Hierarchy | str:
    """The cgroup hierarchy with the cpu controller, or why there is none."""
    try:
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError as exc:
        return f"cannot read /proc/self/mountinfo ({exc})"
    cgroup2 = None
    for line in mounts:
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        root, mount_point, fstype, super_options = fields[3], fields[4], tail[0], tail[2].split(",")
        if fstype == "cgroup" and "cpu" in super_options:
            return _Hierarchy(1, Path(mount_point), root)
        if fstype == "cgroup2" and cgroup2 is None:
            cgroup2 = _Hierarchy(2, Path(mount_point), root)
    if cgroup2 is None:
        return "no cgroup v1 hierarchy with the cpu controller and no cgroup2 mount"
    try:
        controllers = (cgroup2.mount / "cgroup.controllers").read_text().split()
    except OSError as exc:
        return f"cgroup2 at {cgroup2.mount}: cannot read cgroup.controllers ({exc})"
    if "cpu" not in controllers:
        return f"no cgroup v1 cpu hierarchy, and the cgroup2 mount at {cgroup2.mount} does not offer cpu"
    return cgroup2


def period_for(percent: float, shortest_us: int = DEFAULT_SHORTEST_PERIOD_US) -> int:
    """The shortest period (whole ms, at least ``shortest_us``) whose quota at ``percent`` reaches 1 ms."""
    if not 0 < percent <= 100:
        raise ValueError(f"percent must be in (0, 100], not {percent}")
    needed = math.ceil(MIN_QUOTA_US * 100 / percent / 1000) * 1000
    return max(shortest_us, needed)


def unavailable_reason() -> str | None:
    """None when ``CpuCap`` can work here, else why not (creates and removes one probe group)."""
    try:
        with CpuCap([], percent=100, period_us=DEFAULT_SHORTEST_PERIOD_US, probe=True):
            pass
    except CpuCapUnavailable as exc:
        return str(exc)
    return None


class CpuCap:
    """Each of ``pids`` in a group of its own, capped at ``percent`` of one core (see the module docstring)."""

    def __init__(
        self,
        pids: Iterable[int],
        *,
        percent: float,
        period_us: int = DEFAULT_SHORTEST_PERIOD_US,
        probe: bool = False,
    ) -> None:
        if not 0 < percent <= 100:
            raise ValueError(f"percent must be in (0, 100], not {percent}")
        if not 1000 <= period_us <= 1_000_000:
            raise ValueError(f"period_us must be between 1 ms and 1 s, not {period_us}")
        self.pids = tuple(pids)
        self.percent = percent
        self.period_us = period_us
        self.quota_us = round(period_us * percent / 100)
        if self.quota_us < MIN_QUOTA_US:
            raise ValueError(
                f"{percent}% of a {period_us} µs period is below the kernel's {MIN_QUOTA_US} µs minimum quota; "
                f"use period_us >= {period_for(percent)}"
            )
        self._probe = probe  # one group, no process moved: checks that groups can be made
        self._hierarchy: _Hierarchy | None = None
        self._groups: dict[int, Path] = {}  # pid -> its group
        self._origins: dict[int, Path] = {}  # pid -> the group it was in
        self._parent: Path | None = None

    @property
    def hierarchy(self) -> str:
        """``"cgroup v1"`` or ``"cgroup v2"`` once entered."""
        return f"cgroup v{self._hierarchy.version}" if self._hierarchy else "not entered"

    def throttling(self) -> dict[int, Throttling]:
        """Per capped pid: its group's cumulative CFS periods, throttled periods and throttled seconds."""
        assert self._hierarchy is not None, "CpuCap not entered"
        return {pid: self._hierarchy.read_throttling(group) for pid, group in self._groups.items()}

    def __enter__(self) -> CpuCap:
        found = _find_hierarchy()
        if isinstance(found, str):
            raise CpuCapUnavailable(found)
        self._hierarchy = found
        self._parent = found.parent_for_new_groups()
        try:
            if found.version == 2:
                self._enable_cpu_controller(found.mount)
            targets = [0] if self._probe else list(self.pids)
            for index, pid in enumerate(targets):
                group = self._parent / f"{GROUP_PREFIX}-{os.getpid()}-{index}"
                group.mkdir()
                self._groups[pid] = group
                found.set_quota(group, period_us=self.period_us, quota_us=self.quota_us)
                if self._probe:
                    continue
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
        leftovers = self._release()
        if leftovers:
            message = f"CPU-cap groups left behind: {', '.join(leftovers)}"
            if exc_type is None:
                raise RuntimeError(message)
            warnings.warn(message, RuntimeWarning, stacklevel=2)

    @staticmethod
    def _enable_cpu_controller(mount: Path) -> None:
        subtree = mount / "cgroup.subtree_control"
        if "cpu" not in subtree.read_text().split():
            subtree.write_text("+cpu")

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
                    else:
                        time.sleep(0.05)
            self._groups.pop(pid, None)
        return leftovers
