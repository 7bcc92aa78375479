"""The kernel lab's exception tree (imports nothing from the lab).

```
LabError
  LabUnavailable     this machine cannot run the lab (no QEMU, packages not fetchable):
                     a skip outside CI, a failure in CI
  GuestError         the VM ran but something in it went wrong; carries the guest's dmesg
    BootTimeout      the guest agent never reported ready
    VMDied           QEMU exited (or was killed by the hard timeout) while we needed it
    CommandTimeout   one guest command outlived its timeout and was killed
    CommandFailed    Result.check() on a non-zero exit status
```
"""

from __future__ import annotations

_DMESG_TAIL_LINES = 60


class LabWarning(UserWarning):
    """Something went wrong in the lab and was worked around (a guest boot retried)."""


class LabError(Exception):
    """Base of every error the lab raises."""


class LabUnavailable(LabError):
    """The lab cannot run on this machine; ``str()`` is one line fit for a skip reason."""


class GuestError(LabError):
    """Something failed inside (or while driving) the VM.

    The message ends with the tail of the guest's kernel log, because a USB/IP failure
    is nearly always explained there (vhci/stub errors, enumeration failures, oopses).
    """

    def __init__(self, message: str, dmesg: str = "") -> None:
        self.dmesg = dmesg
        super().__init__(_with_dmesg(message, dmesg))


class BootTimeout(GuestError):
    """The guest did not come up in time."""


class VMDied(GuestError):
    """QEMU is gone: the guest powered off, panicked, or was killed."""


class CommandTimeout(GuestError):
    """A guest command ran past its timeout; it has been killed."""


class CommandFailed(GuestError):
    """A guest command exited non-zero where success was required."""


def _with_dmesg(message: str, dmesg: str) -> str:
    if not dmesg:
        return message
    tail = "\n".join(dmesg.rstrip("\n").splitlines()[-_DMESG_TAIL_LINES:])
    return f"{message}\n--- guest dmesg (last {_DMESG_TAIL_LINES} lines) ---\n{tail}"
