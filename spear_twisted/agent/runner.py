"""
:func:`run`: the entry point of an agent program.

It reads the configuration, connects and presents the instance's secret
with a plain socket (:mod:`spear_twisted.agent.bootstrap`), waits for the
spearlet's answer (``AgentConfig.await_auth_response``), and only then
chooses txaio's framework, once, imports it and runs the agent on the
connected socket.  Nothing here is imported before that choice but the
standard library and the agent's small configuration modules.  Over the
gRPC bridge the agent dials once its framework is loaded (HTTP/2 is not
written by hand); under asyncio that needs grpcio (``spear_twisted[grpc]``),
and its absence is a configuration error that says so.
"""

from __future__ import annotations

import os
import sys

from spear_twisted.agent.config import (
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_UNREACHABLE,
    SECRET_VARIABLES,
    AgentConfig,
    AgentConfigError,
    say,
)

try:
    # The C module, loaded with the interpreter: ``signal`` would make its
    # enums before the AuthRequest goes out.
    import _signal as signals  # type: ignore[import-not-found]
except ImportError:  # another Python than CPython
    import signal as signals

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from spear_twisted.agent.core import Handler, SignalHook

#: The frameworks an agent can run on.
FRAMEWORKS = ("asyncio", "twisted")


def run(
    handler: Handler,
    *,
    framework: str = "asyncio",
    on_signal: SignalHook | None = None,
    config: AgentConfig | None = None,
    **overrides: object,
) -> int:
    """
    Run an agent whose requests ``handler`` answers, until it ends; returns
    its exit status (pass it to ``sys.exit``).

    :param framework: ``"asyncio"`` (which imports no Twisted) or
        ``"twisted"``; txaio is set to it here, once.
    :param on_signal: called with each ``SignalMessage`` but Terminate
        (Pause, Resume, Restart, Custom); it may return a Deferred, a future
        or a coroutine.
    :param config: the whole configuration; by default it is read from the
        environment (PROTOCOL.md section 7), with ``overrides`` (any
        :class:`AgentConfig` argument) taking precedence.

    The instance's secret is removed from ``os.environ`` (programs the
    handler starts do not inherit it).  Exit statuses: 0 after a
    ``Terminate`` signal, SIGTERM or SIGINT; 69 when the spearlet cannot
    be reached after every retry; 76 when it breaks the protocol; 77 when it
    refuses the instance's secret; 78 for a configuration error (including
    the gRPC transport under asyncio without grpcio installed).  A SIGTERM
    or SIGINT during start-up (connecting, or importing the framework)
    ends it with status 0 and a line on stderr.
    """
    if framework not in FRAMEWORKS:
        raise ValueError(f"framework must be one of {', '.join(FRAMEWORKS)}, not {framework!r}")
    # Until the event loop's own handlers take over, SIGTERM and SIGINT end
    # the start-up (connecting, importing the framework) cleanly.
    previous = _catch_early_signals()
    try:
        return _run(handler, framework, on_signal, config, overrides)
    except _Terminated as e:
        say(f"terminating ({e.name}) before the agent started")
        return EXIT_OK
    finally:
        for number, handler_before in previous.items():
            signals.signal(number, handler_before)


def _run(
    handler: Handler,
    framework: str,
    on_signal: SignalHook | None,
    config: AgentConfig | None,
    overrides: dict[str, object],
) -> int:
    try:
        if config is None:
            config = AgentConfig.from_environment(None, **overrides)
    except AgentConfigError as e:
        say(f"configuration error: {e}")
        return EXIT_CONFIG
    for name in SECRET_VARIABLES:
        os.environ.pop(name, None)
    connected = None
    if config.transport == "grpc":
        # HTTP/2 cannot be spoken by hand on a plain socket before the
        # framework loads: the agent dials once its framework is up.
        if framework == "asyncio" and not _has_grpcio():
            say(
                "configuration error: SPEAR_COMMUNICATION_TYPE=grpc under asyncio needs grpcio, which is not"
                " installed: pip install 'spear_twisted[grpc]' (or run the agent with framework='twisted')"
            )
            return EXIT_CONFIG
    else:
        from spear_twisted.agent.bootstrap import await_answer, connect_and_authenticate

        connected = connect_and_authenticate(config)
        if connected is None:
            return EXIT_UNREACHABLE
        if config.await_auth_response:
            # The imports below are most of the start's CPU time: not while
            # the spearlet may still be starting other instances.
            await_answer(connected, config.connect_timeout)
    import txaio as _txaio

    txaio: Any = _txaio  # its functions are bound when the framework is chosen
    if framework == "asyncio":
        txaio.use_asyncio()
        txaio.start_logging(out=sys.stderr, level="info")
        from spear_twisted.agent.aio import run_agent
    else:
        txaio.use_twisted()
        txaio.start_logging(out=sys.stderr, level="info")
        from spear_twisted.agent.tx import run_agent
    return run_agent(handler, config, on_signal=on_signal, preconnected=connected)


class _Terminated(BaseException):
    """A SIGTERM or SIGINT during start-up (a BaseException: nothing on the way may catch it)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


#: The signals that end the start-up, by number.
_EARLY_SIGNALS = {signals.SIGTERM: "SIGTERM", signals.SIGINT: "SIGINT"}


def _terminate_early(number: int, _frame: object) -> None:
    raise _Terminated(_EARLY_SIGNALS.get(number, f"signal {number}"))


def _catch_early_signals() -> dict[int, Any]:
    """Route SIGTERM and SIGINT to :func:`_terminate_early`; the handlers they had."""
    previous: dict[int, Any] = {}
    for number in _EARLY_SIGNALS:
        try:
            previous[number] = signals.signal(number, _terminate_early)
        except ValueError:
            break  # not the main thread, which alone sets handlers: an agent's run is its program's
    return previous


def _has_grpcio() -> bool:
    try:
        import grpc  # noqa: F401
    except ImportError:
        return False
    return True
