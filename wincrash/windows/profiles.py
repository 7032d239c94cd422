"""Volatility-2 style profile names, as found in existing runbooks, and the builds each one means.

A profile states what the user expects; convert checks the memory against it instead of trusting
it (the build comes from memory), and stops when they disagree unless --force.
"""

from __future__ import annotations

from wincrash.errors import WincrashError

WIN10_BUILDS = (10240, 10586, 14393, 15063, 16299, 17134, 17763, 18362, 18363, 19041, 19042, 19043, 19044,
                19045)

PROFILES: dict[str, tuple[int, int]] = {  # name -> inclusive build range
    "Win7SP1x64": (7601, 7601),
    "Win2008R2SP1x64": (7601, 7601),
    "Win8SP0x64": (9200, 9200),
    "Win8SP1x64": (9600, 9600),
    "Win81U1x64": (9600, 9600),
    "Win2012x64": (9200, 9200),
    "Win2012R2x64": (9600, 9600),
    "Win2016x64_14393": (14393, 14393),
    "Win10x64": (10240, 21999),
    "Win2019x64": (17763, 17763),
    "Win2022x64": (20348, 20348),
    "Win11x64": (22000, 99999),
}
PROFILES.update({f"Win10x64_{b}": (b, b) for b in WIN10_BUILDS})


def profile_names() -> list[str]:
    return sorted(PROFILES)


def check_profile(name: str, build: int) -> str | None:
    """None when ``build`` fits profile ``name`` ('auto' fits all); else a sentence saying why not.

    Raises WincrashError for an unknown profile name, listing the valid ones.
    """
    if name == "auto":
        return None
    if name not in PROFILES:
        raise WincrashError(f"unknown profile {name!r}; valid profiles: auto, {', '.join(profile_names())}")
    low, high = PROFILES[name]
    if low <= build <= high:
        return None
    expected = f"build {low}" if low == high else f"builds {low}-{high}"
    return f"the memory holds Windows build {build}, but profile {name} means {expected}"
