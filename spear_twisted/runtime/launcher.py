"""
The launcher every instance process starts in: ``python -I -S launcher.py SPEC``.

It is a script, not a module of the package, and imports only the standard
library, so it starts in a few milliseconds.  SPEC is JSON:
``{"executable": path, "argv": [...], "rlimits": {"RLIMIT_AS": n, ...},
"parent": pid}``.  It

1. starts a new session (so the instance has its own process group, which the
   spearlet signals as a whole);
2. arms the parent-death signal (SIGKILL when the spearlet dies) and checks
   that the spearlet is still its parent, closing the race with a spearlet
   that died first;
3. applies the resource limits;
4. restores the signal dispositions Python changed (SIGPIPE, SIGXFSZ), which
   would otherwise be inherited by the program;
5. replaces itself with the program (its environment is the explicit one the
   spearlet passed).

Failures before the exec exit with status 127 and say why on stderr.
"""

import json
import os
import resource
import signal
import sys

PR_SET_PDEATHSIG = 1


def _fail(message: str) -> None:
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


def _apply_limits(rlimits: dict) -> None:
    for name, value in rlimits.items():
        which = getattr(resource, name, None)
        if which is None:
            _fail(f"unknown resource limit {name}")
        _soft, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY and value > hard:
            value = hard  # cannot raise above the hard limit without privilege
        try:
            resource.setrlimit(which, (value, value))
        except (ValueError, OSError) as e:
            _fail(f"cannot set {name} to {value}: {e}")


def main() -> None:
    try:
        spec = json.loads(sys.argv[1])
        executable = spec["executable"]
        argv = spec["argv"]
    except (IndexError, ValueError, KeyError, TypeError) as e:
        _fail(f"bad launch specification: {e}")
    os.setsid()
    _arm_parent_death_signal(int(spec["parent"]))
    _apply_limits(spec.get("rlimits", {}))
    for number in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(number, signal.SIG_DFL)
    try:
        os.execv(executable, argv)
    except OSError as e:
        _fail(f"cannot execute {executable}: {e.strerror}")


if __name__ == "__main__":
    main()
