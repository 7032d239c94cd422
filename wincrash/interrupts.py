"""SIGTERM and SIGHUP handled like Ctrl-C, so that every cleanup (partial outputs, QEMU's dump job,
the guest resumed) runs whatever stopped us: `kill`, `timeout`, systemd, or an SSH session dropping.

``install()`` (called once by cli.main) makes both signals behave as SIGINT does at that moment:
inside ``asyncio.run`` the running task is cancelled (its ``finally`` blocks run), elsewhere
KeyboardInterrupt is raised. ``exit_code`` then gives 128 + the signal's number (143 for SIGTERM,
129 for SIGHUP), the shell's convention; Ctrl-C stays 130.
"""

from __future__ import annotations

import signal
from types import FrameType

_received: list[int] = []  # signal numbers, in order


def _handler(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)
    like_ctrl_c = signal.getsignal(signal.SIGINT)
    if callable(like_ctrl_c) and like_ctrl_c is not _handler:
        like_ctrl_c(signal.SIGINT, frame)  # asyncio's handler cancels the main task; Python's raises
        return
    raise KeyboardInterrupt


def install() -> None:
    """Handle SIGTERM and SIGHUP like SIGINT (main thread only; a no-op when a signal is ignored, e.g. nohup)."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, _handler)


def exit_code(default: int) -> int:
    """128 + the first SIGTERM/SIGHUP received, else ``default`` (130 for Ctrl-C)."""
    return 128 + _received[0] if _received else default
