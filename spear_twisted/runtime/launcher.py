"""
The Python launcher of instance processes: ``python -I -S launcher.py SPEC``.

Used where the util-linux tools of the default launcher (``setpriv``,
``prlimit``, ``setsid``) are missing.  It is a script run by path, not
imported, and uses only the standard library.  SPEC is JSON:
``{"argv": [program, arg, ...], "rlimits": {"RLIMIT_AS": n, ...},
"parent": pid, "environment": [name, ...]}``.  It

1. starts a new session, so the instance leads its own process group, which
   the spearlet signals as a whole;
2. arms the parent-death signal (SIGKILL when the spearlet's thread that
   spawned it dies), then checks that the spearlet is still its parent,
   closing the race with a spearlet that died first;
3. sets the resource limits (soft and hard);
4. restores the signal dispositions this interpreter changed (SIGPIPE and
   SIGXFSZ are ignored by Python, and ignored signals survive ``exec``);
5. replaces itself with the program, with the environment the spearlet
   passed: only the variables ``environment`` names (this interpreter may
   have added some, such as ``LC_CTYPE`` when it coerces a C locale).

A failure before the ``exec`` exits with status 127 and says why on stderr.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys

# Not ``typing.TYPE_CHECKING``: importing typing would slow every instance's start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

PR_SET_PDEATHSIG = 1


def _fail(message: str) -> NoReturn:
    sys.stderr.write(f"spear launcher: {message}\n")
    sys.stderr.flush()
    os._exit(127)


def _arm_parent_death_signal(parent: int) -> None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            _fail(f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(ctypes.get_errno())}")
    except (OSError, AttributeError) as e:
        _fail(f"cannot arm the parent-death signal: {e}")
    if os.getppid() != parent:
        _fail("the spearlet exited before the instance started")


def _apply_limits(rlimits: dict[str, int]) -> None:
    for name, value in rlimits.items():
        which = getattr(resource, name, None)
        if which is None:
            _fail(f"unknown resource limit {name}")
        try:
            resource.setrlimit(which, (value, value))
        except (ValueError, OSError) as e:
            _fail(f"cannot set {name} to {value}: {e}")


def main() -> None:
    try:
        spec = json.loads(sys.argv[1])
        argv = [str(item) for item in spec["argv"]]
        parent = int(spec["parent"])
        rlimits = dict(spec.get("rlimits", {}))
        names = {str(name) for name in spec.get("environment", ())}
    except (IndexError, ValueError, KeyError, TypeError) as e:
        _fail(f"bad launch specification: {e}")
    if not argv:
        _fail("bad launch specification: empty argv")
    os.setsid()
    _arm_parent_death_signal(parent)
    _apply_limits(rlimits)
    for number in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(number, signal.SIG_DFL)
    try:
        os.execve(argv[0], argv, {name: value for name, value in os.environ.items() if name in names})
    except OSError as e:
        _fail(f"cannot execute {argv[0]}: {e.strerror}")


if __name__ == "__main__":
    main()
