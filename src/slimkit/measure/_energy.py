"""Energy from RAPL counters (Intel, and AMD with the powercap driver), never estimated.

RAPL counts the energy of the whole CPU package, so on a machine shared with other jobs the
energy per sample is an upper bound on the model's own. Where the counters are missing or
unreadable (most containers, and Linux >= 5.10 makes them root-only), the reading says why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RAPL_ROOT", "EnergyMeter", "EnergyReading", "open_rapl"]

RAPL_ROOT = Path("/sys/class/powercap")
_PACKAGE_ZONE = re.compile(r"intel-rapl:\d+$")  # sub-zones (intel-rapl:0:0) are inside these


@dataclass(frozen=True)
class EnergyReading:
    """Energy per sample in joules, or why it is not available."""

    available: bool
    joules_per_sample: float | None
    reason: str | None

    @classmethod
    def unavailable(cls, reason: str) -> EnergyReading:
        return cls(False, None, reason)


@dataclass(frozen=True)
class _Zone:
    counter: Path
    wrap_uj: int  # the counter restarts from zero after this value


class EnergyMeter:
    """Reads the package-level RAPL counters; :meth:`joules_since` handles counter wrap-around.

    Example:
        >>> meter, reason = open_rapl()
        >>> meter is not None or reason is not None
        True
    """

    def __init__(self, zones: list[_Zone]) -> None:
        self.zones = zones

    def read(self) -> list[int]:
        """Raw counter values in microjoules, one per package."""
        return [int(zone.counter.read_text()) for zone in self.zones]

    def joules_since(self, before: list[int]) -> float:
        """Joules spent by all packages since ``before`` (a :meth:`read` result)."""
        total_uj = 0
        for zone, old, new in zip(self.zones, before, self.read(), strict=True):
            total_uj += new - old if new >= old else zone.wrap_uj - old + new
        return total_uj / 1e6


def open_rapl(root: Path = RAPL_ROOT) -> tuple[EnergyMeter | None, str | None]:
    """A meter over the package zones under ``root``, or ``(None, reason)`` if there is none.

    Example:
        >>> import tempfile
        >>> open_rapl(Path(tempfile.mkdtemp()))[1].startswith("no RAPL")
        True
    """
    folders = sorted(p for p in root.glob("intel-rapl:*") if _PACKAGE_ZONE.match(p.name))
    if not folders:
        return None, f"no RAPL counters under {root} (no powercap driver, or hidden by a container)"
    zones = []
    for folder in folders:
        counter, wrap = folder / "energy_uj", folder / "max_energy_range_uj"
        try:
            int(counter.read_text())
            zones.append(_Zone(counter, int(wrap.read_text())))
        except PermissionError as exc:
            return None, (
                f"{exc.filename} is not readable by this user (RAPL is root-only on Linux >= 5.10)"
            )
        except (OSError, ValueError) as exc:
            return None, f"cannot read the RAPL counter in {folder}: {exc}"
    return EnergyMeter(zones), None
