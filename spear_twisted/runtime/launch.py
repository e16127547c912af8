"""
How an instance's process is started: the launcher that prepares it and
then ``exec``\\ s its program.

Before the program runs, the process must lead its own session (so the
spearlet can signal its whole process group), have its parent-death signal
armed (so it dies with the spearlet), and have its resource limits set.
Twisted's ``spawnProcess`` can do none of this, so a launcher does it:

* :class:`UtilLinuxLauncher` (the default where available) chains small
  util-linux programs, each of which ``exec``\\ s the next::

      setsid -- setpriv --pdeathsig KILL -- sh -c 'check the parent; exec "$@"' PID drop-pwd \\
          prlimit --as=N --nofile=N -- PROGRAM ARGS...

  Five ``exec``\\ s of small C programs cost about 3 ms.
* :class:`PythonLauncher` runs ``launcher.py`` in a second interpreter
  (``python -I -S``), about 20 ms (``ctypes`` for ``prctl``).  It needs only
  Python, for systems without those tools.

Both leave the same process: the pid Twisted spawned, now the program.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Collection, Mapping, Sequence

import attrs

#: The Python launcher script.
LAUNCHER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "launcher.py")

#: Where the util-linux tools are looked for (besides the spearlet's PATH).
SYSTEM_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"

#: ``prlimit`` options of the limits a :class:`ResourceLimits` sets.
PRLIMIT_OPTIONS = {
    "RLIMIT_AS": "--as",
    "RLIMIT_CPU": "--cpu",
    "RLIMIT_NOFILE": "--nofile",
    "RLIMIT_NPROC": "--nproc",
}

# $0 is the spearlet's pid; the parent-death signal is armed by now, so if the
# parent is still the spearlet it will be killed with it, and if it is not,
# the spearlet died before: do not start an orphan.  The shell exports PWD;
# it stays only if the instance's environment has it ($1 is "keep-pwd").
_CHECK_PARENT = (
    '[ "$PPID" = "$0" ] || { echo "spear launcher: the spearlet exited before the instance started" >&2;'
    ' exit 127; }; [ "$1" = keep-pwd ] || unset PWD; shift; exec "$@"'
)


@attrs.frozen
class LaunchCommand:
    """What to hand ``spawnProcess``: the file to execute and its argv."""

    executable: str
    argv: tuple[str, ...]


class Launcher:
    """Turns a program, its limits and the spearlet's pid into a :class:`LaunchCommand`."""

    #: The name configuration uses (``ProcessRuntimeConfig.launcher``).
    name = ""

    def command(
        self,
        program: str,
        args: Sequence[str],
        rlimits: Mapping[str, int],
        parent: int,
        *,
        environment: Collection[str] = (),
    ) -> LaunchCommand:
        """
        The command that starts ``program`` with ``args`` under ``rlimits``
        for the spearlet ``parent``.  ``environment`` names the variables of
        the spawned environment: the program gets exactly those, none added
        by the launcher on the way.
        """
        raise NotImplementedError


@attrs.frozen
class UtilLinuxLauncher(Launcher):
    """``setsid`` + ``setpriv`` + ``sh`` + ``prlimit``; see the module docstring."""

    setpriv: str
    sh: str
    prlimit: str
    setsid: str

    name = "util-linux"

    def command(
        self,
        program: str,
        args: Sequence[str],
        rlimits: Mapping[str, int],
        parent: int,
        *,
        environment: Collection[str] = (),
    ) -> LaunchCommand:
        # setsid first, so that the rest of the chain already runs in the
        # instance's session: with Linux's autogroups its CPU time counts
        # against that session's share, not the spearlet's.  setsid forks
        # only if it already leads a process group, which a freshly spawned
        # child never does: the pid stays the program's.
        argv = [self.setsid, "--", self.setpriv, "--pdeathsig", "KILL", "--", self.sh, "-c", _CHECK_PARENT]
        argv.append(str(parent))
        argv.append("keep-pwd" if "PWD" in environment else "drop-pwd")
        if rlimits:
            argv.append(self.prlimit)
            argv += [f"{PRLIMIT_OPTIONS[name]}={value}" for name, value in sorted(rlimits.items())]
            argv.append("--")
        argv += [program, *args]
        return LaunchCommand(self.setsid, tuple(argv))

    @classmethod
    def find(cls, path: str | None = None, *, system_path: str = SYSTEM_PATH) -> UtilLinuxLauncher | None:
        """The tools on ``path`` (then ``system_path``), or ``None`` if one is missing or too old."""
        search = os.pathsep.join(part for part in (path, system_path) if part)
        found = {name: shutil.which(name, path=search) for name in ("setpriv", "sh", "prlimit", "setsid")}
        if None in found.values():
            return None
        setpriv = found["setpriv"]
        assert setpriv is not None
        try:
            usage = subprocess.run(
                [setpriv, "--help"], capture_output=True, text=True, timeout=10, check=False
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        if "--pdeathsig" not in usage:  # util-linux before 2.33
            return None
        return cls(**found)  # type: ignore[arg-type]


@attrs.frozen
class PythonLauncher(Launcher):
    """``python -I -S launcher.py SPEC``; see the module docstring."""

    python: str = sys.executable

    name = "python"

    def command(
        self,
        program: str,
        args: Sequence[str],
        rlimits: Mapping[str, int],
        parent: int,
        *,
        environment: Collection[str] = (),
    ) -> LaunchCommand:
        import json

        # Names only: values (the secret) must not appear on a command line.
        spec = {
            "argv": [program, *args],
            "rlimits": dict(rlimits),
            "parent": parent,
            "environment": sorted(environment),
        }
        return LaunchCommand(self.python, (self.python, "-I", "-S", LAUNCHER_SCRIPT, json.dumps(spec)))


#: The launcher names ``select_launcher`` accepts.
LAUNCHERS = ("auto", "util-linux", "python")


def select_launcher(
    name: str = "auto", *, path: str | None = None, system_path: str = SYSTEM_PATH
) -> Launcher:
    """
    The launcher called ``name``: ``util-linux``, ``python``, or ``auto``
    (util-linux when its tools are found, else python).

    :raises ValueError: for an unknown name, or ``util-linux`` without its tools.
    """
    if name not in LAUNCHERS:
        raise ValueError(f"unknown launcher {name!r}: expected one of {', '.join(LAUNCHERS)}")
    if name == "python":
        return PythonLauncher()
    found = UtilLinuxLauncher.find(
        path if path is not None else os.environ.get("PATH"), system_path=system_path
    )
    if found is not None:
        return found
    if name == "util-linux":
        raise ValueError(
            "the util-linux launcher needs setpriv (util-linux 2.33 or later), prlimit, setsid and sh"
        )
    return PythonLauncher()


def effective_limits(rlimits: Mapping[str, int]) -> tuple[dict[str, int], list[str]]:
    """
    ``rlimits`` lowered to the spearlet's own hard limits (which its children
    inherit and cannot raise), and a note for each value lowered.
    """
    applied: dict[str, int] = {}
    notes: list[str] = []
    for name, value in rlimits.items():
        _soft, hard = resource.getrlimit(getattr(resource, name))
        if hard != resource.RLIM_INFINITY and value > hard:
            notes.append(f"{name} {value} is above the spearlet's hard limit; {hard} is used")
            value = hard
        applied[name] = value
    return applied, notes
