"""The contracts of the channel layer."""

from __future__ import annotations

from zope.interface import Attribute, Interface


class ICommunicationChannel(Interface):
    """
    One instance's two-way message channel, whatever the transport.

    A channel belongs to exactly one instance: a message sent on it can only
    reach that instance.  Every asynchronous result is a ``Deferred``.
    """

    instance_id = Attribute("The RuntimeInstanceId this channel belongs to.")

    def send(message):  # type: ignore[no-untyped-def]
        """
        Send ``message`` (a ``SpearMessage``).

        :return: a Deferred that fires with ``None`` once the frame is handed
            to the transport; while the transport's buffer is above its
            high-water mark, it waits.  Fails with ``ConnectionLost`` or
            ``ConnectionClosed`` when nothing is connected.
        """

    def receive():  # type: ignore[no-untyped-def]
        """
        The next unsolicited message (one that answers no outstanding
        request), in arrival order.

        :return: a Deferred firing with a ``SpearMessage``; it waits across
            reconnections and fails with ``ConnectionClosed`` once the channel
            is closed.
        """

    def request_response(message, timeout=None):  # type: ignore[no-untyped-def]
        """
        Send ``message`` under a fresh request id and wait for its response.

        :return: a Deferred firing with the response ``SpearMessage``; failing
            with ``RequestTimeout`` after ``timeout`` seconds, with
            ``ConnectionLost`` as soon as the connection drops, with the
            peer's error for an ``Error`` reply; cancellable.
        """

    def send_request(message, timeout=None):  # type: ignore[no-untyped-def]
        """
        :meth:`request_response`, telling the caller the request id the
        message went out under (to signal the peer about the request, say
        to cancel it).

        :return: an ``OutstandingRequest``: ``request_id`` (``None`` when
            nothing was connected) and ``response``, the Deferred
            :meth:`request_response` would return.
        """

    def is_connected():  # type: ignore[no-untyped-def]
        """Whether an authenticated connection is up."""

    def close():  # type: ignore[no-untyped-def]
        """
        Send ``ConnectionClose``, flush, disconnect and stop listening.

        Idempotent.  :return: a Deferred that fires once everything is closed.
        """

    def get_stats():  # type: ignore[no-untyped-def]
        """The channel's figures, as a ``ChannelStats``."""

    def when_connected():  # type: ignore[no-untyped-def]
        """A Deferred that fires with the channel once it is connected (at once if it is)."""
