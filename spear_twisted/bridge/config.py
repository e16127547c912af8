"""``BridgeConfig``: the gRPC bridge's limits, each checked when it is made."""

from __future__ import annotations

from typing import Any

import attrs

from spear_twisted.auth import read_token_file, token_problem
from spear_twisted.settings import not_negative, positive, setting

KiB = 1024
MiB = 1024 * KiB

#: Largest HTTP/2 flow-control window (RFC 9113 section 6.9.1).
MAX_WINDOW = 2**31 - 1


def _window(_instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if not 65_535 <= value <= MAX_WINDOW:
        raise ValueError(f"{attribute.name} must be within 65535..{MAX_WINDOW}, not {value!r}")


@attrs.frozen
class BridgeConfig:
    """
    Settings of a :class:`~spear_twisted.bridge.server.BridgeServer`.

    Sizes are bytes, times seconds.  Memory held for one connection is
    bounded by ``max_concurrent_streams`` x (``max_receive_message_size`` +
    ``stream_window_size`` + ``receive_buffer_size``), and the bytes a peer
    may have in flight by ``connection_window_size``.
    """

    __spear_settings__ = True

    max_receive_message_size: int = setting(
        4 * MiB,
        doc="Largest message a client may send; a longer one ends its call with RESOURCE_EXHAUSTED"
        " as soon as its length is read, before any of it is buffered.",
        validator=not_negative,
    )
    max_send_message_size: int = setting(
        4 * MiB,
        doc="Largest message the server sends; a longer response ends its call with RESOURCE_EXHAUSTED.",
        validator=not_negative,
    )
    max_concurrent_streams: int = setting(
        100,
        doc="Calls a client may run at once on one connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS).",
        validator=positive,
    )
    stream_window_size: int = setting(
        1 * MiB,
        doc="HTTP/2 receive window of each stream: bytes a client may send on a call before the server"
        " has consumed them (SETTINGS_INITIAL_WINDOW_SIZE).",
        validator=_window,
    )
    connection_window_size: int = setting(
        16 * MiB,
        doc="HTTP/2 receive window of a whole connection; keep it several stream windows wide so that"
        " one slow call does not stall the others.",
        validator=_window,
    )
    receive_buffer_size: int = setting(
        256 * KiB,
        doc="Bytes of whole messages a streaming call may hold for a handler that has not taken them;"
        " beyond it the server stops acknowledging that call's data, so the client waits.",
        validator=not_negative,
    )
    max_header_list_size: int = setting(
        16 * KiB,
        doc="Largest header block (metadata) a client may send (SETTINGS_MAX_HEADER_LIST_SIZE).",
        validator=positive,
    )
    max_buffered_control_bytes: int = setting(
        64 * KiB,
        doc="Control frames (PING and SETTINGS acknowledgements, window updates, resets) buffered for a"
        " client that does not read; beyond it the connection is aborted.",
        validator=positive,
    )
    reset_burst: int = setting(
        1000,
        doc="Stream resets a client may send in a burst (Rapid Reset defence, CVE-2023-44487).",
        validator=positive,
    )
    reset_rate: float = setting(
        33.0,
        doc="Stream resets per second a client may sustain after a burst; beyond it the connection"
        " gets GOAWAY with ENHANCE_YOUR_CALM and is closed.",
        validator=positive,
    )
    shutdown_grace: float = setting(
        10.0,
        doc="On shutdown, how long calls in flight may run after GOAWAY before they are ended with"
        " UNAVAILABLE.",
        validator=not_negative,
    )
    goaway_ping_timeout: float = setting(
        1.0,
        doc="On shutdown, how long to wait for the client's PING acknowledgement between the first"
        " GOAWAY (no new calls please) and the final one (the last call served).",
        validator=positive,
    )
    close_timeout: float = setting(
        10.0,
        doc="How long a closing connection may take to flush before it is aborted.",
        validator=positive,
    )

    def __attrs_post_init__(self) -> None:
        if self.connection_window_size < self.stream_window_size:
            raise ValueError(
                f"connection_window_size ({self.connection_window_size}) must be at least"
                f" stream_window_size ({self.stream_window_size})"
            )

    @property
    def acknowledge_batch(self) -> int:
        """
        Consumed bytes a call gathers before it acknowledges them to HTTP/2
        (it acknowledges the rest when the client ends its side or the call
        ends): an eighth of the stream window, and of a stream's share of the
        connection window, so that the client never waits for them.
        """
        share = self.connection_window_size // self.max_concurrent_streams
        return min(self.stream_window_size, share) // 8


def _descriptions(_instance: object, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    for description in value:
        if ":" not in description:
            raise ValueError(
                f"{attribute.name}: {description!r} is not an endpoint description such as "
                "'tcp:50051:interface=127.0.0.1' or 'unix:/run/spear/bridge.sock'"
            )


def _tokens(_instance: object, attribute: attrs.Attribute[Any], value: dict[str, str]) -> None:
    for name, token in value.items():
        problem = token_problem(token)
        if problem is not None:
            raise ValueError(f"{attribute.name}: the token of caller {name!r} is unusable: {problem}")


@attrs.frozen
class BridgeServiceConfig:
    """
    The gRPC bridge of a spearlet (the ``[bridge]`` table): where it listens,
    who may call ``Execute`` and ``Status``, whether agents may ``Connect``,
    and its HTTP/2 settings (``[bridge.http2]``).
    """

    __spear_settings__ = True

    listen: tuple[str, ...] = setting(
        (),
        doc="Endpoint descriptions the bridge listens on (``tcp:50051:interface=127.0.0.1``,"
        " ``unix:/run/spear/bridge.sock``, ``h2tls:port=50443:certKey=...:privateKey=...``);"
        " empty: no bridge.",
        converter=tuple,
        validator=_descriptions,
    )
    allow_remote: bool = setting(False, doc="Allow a listener on an address that is not loopback.")
    tokens: dict[str, str] = setting(
        attrs.Factory(dict),
        doc="Callers of ``Execute`` and ``Status``, by name, with the bearer token each presents"
        " (``authorization: Bearer <token>``); prefer ``token_files``, which keep tokens out of the file.",
        validator=_tokens,
        hash=False,
    )
    token_files: dict[str, str] = setting(
        attrs.Factory(dict),
        doc="Callers by name, each with a file holding its bearer token (surrounding blanks ignored).",
        hash=False,
    )
    allow_any_caller: bool = setting(
        False,
        doc="Accept ``Execute`` and ``Status`` from any caller, without a token (for a loopback-only"
        " bridge whose callers are trusted); otherwise a call without a known token is UNAUTHENTICATED.",
    )
    connect: bool = setting(
        True,
        doc="Serve ``Connect``: an agent may open its session here; it authenticates with its instance's"
        " secret and joins its instance's channel, as on the spearlet's other listeners.",
    )
    http2: BridgeConfig = setting(attrs.Factory(BridgeConfig), doc="HTTP/2 and gRPC limits of the bridge.")

    def __attrs_post_init__(self) -> None:
        if self.allow_any_caller and (self.tokens or self.token_files):
            raise ValueError("allow_any_caller accepts every caller: set it or tokens/token_files, not both")

    def caller_tokens(self) -> dict[str, str]:
        """
        Every caller's token: ``tokens``, and those read from ``token_files``.

        :raises ValueError: naming a file that cannot be read, is empty or
            holds an unusable token.
        """
        tokens = dict(self.tokens)
        for name, path in self.token_files.items():
            try:
                token = read_token_file(path)
            except ValueError as e:
                raise ValueError(f"token_files: the token of caller {name!r}: {e}") from None
            problem = token_problem(token)
            if problem is not None:
                raise ValueError(
                    f"token_files: the token of caller {name!r} in {path} is unusable: {problem}"
                )
            tokens[name] = token
        return tokens
