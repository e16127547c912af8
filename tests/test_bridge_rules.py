"""The gRPC rules without sockets: message framing, headers, statuses, settings, caller tokens."""

from __future__ import annotations

import base64
import itertools

import attrs
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from spear_twisted.bridge.auth import (
    BearerTokenAuthenticator,
    ICallAuthenticator,
    allow_any_caller,
    bearer_token,
)
from spear_twisted.bridge.config import BridgeConfig
from spear_twisted.bridge.framing import PREFIX_SIZE, MessageDecoder, frame_message
from spear_twisted.bridge.headers import (
    MAX_TIMEOUT,
    decode_grpc_message,
    decode_metadata,
    encode_grpc_message,
    encode_metadata,
    format_timeout,
    is_grpc_content_type,
    parse_timeout,
)
from spear_twisted.bridge.methods import CallContext, MethodRegistry
from spear_twisted.bridge.status import (
    ERROR_CODE_KEY,
    STATUS_FOR_CODE,
    GrpcError,
    StatusCode,
    status_for_error,
)
from spear_twisted.errors import (
    AuthenticationFailed,
    ErrorCode,
    InvalidMessage,
    NotAuthenticated,
    UnknownTask,
)
from spear_twisted.wire.codec import structure

messages = st.lists(st.binary(max_size=300), max_size=8)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


class MessageFramingTests(SynchronousTestCase):
    @given(messages, st.lists(st.integers(0, 10**6), max_size=12))
    def test_messages_survive_any_chunking(self, bodies: list[bytes], cuts: list[int]) -> None:
        stream = b"".join(frame_message(body) for body in bodies)
        decoder = MessageDecoder(1000)
        received: list[bytes] = []
        for chunk in chunked(stream, cuts):
            received += decoder.feed(chunk)
        self.assertEqual(received, bodies)
        self.assertIsNone(decoder.end())
        self.assertEqual(decoder.buffered, 0)

    def test_the_prefix_is_a_flag_and_a_big_endian_length(self) -> None:
        self.assertEqual(frame_message(b"abc"), b"\x00\x00\x00\x00\x03abc")
        self.assertEqual(frame_message(b""), b"\x00" * PREFIX_SIZE)
        self.assertEqual(MessageDecoder(10).feed(b"\x00" * 5), [b""])

    def test_an_oversize_message_is_refused_at_its_prefix_without_buffering(self) -> None:
        decoder = MessageDecoder(100)
        self.assertEqual(decoder.feed(frame_message(b"ok") + b"\x00\x00\x00\x00\x65"), [b"ok"])
        assert decoder.error is not None
        self.assertEqual(decoder.error.status, StatusCode.RESOURCE_EXHAUSTED)
        self.assertEqual(
            decoder.error.message, "received message of 101 bytes exceeds the limit of 100 bytes"
        )
        self.assertEqual(decoder.buffered, 0)
        self.assertEqual(decoder.feed(b"x" * 101), [])
        self.assertEqual(decoder.buffered, 0)

    def test_one_whole_message_comes_out_as_bytes_from_any_buffer(self) -> None:
        framed = frame_message(b"whole")
        for data in (framed, bytearray(framed), memoryview(framed)):
            decoder = MessageDecoder(100)
            received = decoder.feed(data)  # type: ignore[arg-type]
            self.assertEqual(received, [b"whole"])
            self.assertIs(type(received[0]), bytes)
            self.assertEqual(decoder.buffered, 0)
        decoder = MessageDecoder(4)
        self.assertEqual(decoder.feed(framed), [])  # one whole message, over the limit
        assert decoder.error is not None
        self.assertEqual(decoder.error.status, StatusCode.RESOURCE_EXHAUSTED)

    def test_an_oversize_prefix_split_across_feeds_is_refused(self) -> None:
        decoder = MessageDecoder(100)
        decoder.feed(b"\x00\x00\x00")
        decoder.feed(b"\x10\x00")
        assert decoder.error is not None
        self.assertEqual(decoder.error.status, StatusCode.RESOURCE_EXHAUSTED)

    def test_a_compressed_message_is_unimplemented_naming_the_encoding(self) -> None:
        decoder = MessageDecoder(100, encoding="gzip")
        decoder.feed(b"\x01\x00\x00\x00\x01x")
        assert decoder.error is not None
        self.assertEqual(decoder.error.status, StatusCode.UNIMPLEMENTED)
        self.assertIn("grpc-encoding gzip", decoder.error.message)
        self.assertIn("accepts identity only", decoder.error.message)

    def test_an_unknown_flag_is_internal(self) -> None:
        decoder = MessageDecoder(100)
        decoder.feed(b"\x02\x00\x00\x00\x00")
        assert decoder.error is not None
        self.assertEqual(decoder.error.status, StatusCode.INTERNAL)
        self.assertEqual(decoder.error.message, "invalid message flag 0x02 (expected 0 or 1)")

    def test_ending_inside_a_message_is_internal(self) -> None:
        decoder = MessageDecoder(100)
        decoder.feed(b"\x00\x00\x00\x00\x0aabc")
        error = decoder.end()
        assert error is not None
        self.assertEqual(error.status, StatusCode.INTERNAL)
        self.assertEqual(error.message, "stream ended inside a message (3 of 10 bytes)")
        decoder = MessageDecoder(100)
        decoder.feed(b"\x00\x00")
        self.assertEqual(decoder.end().message, "stream ended inside a message (2 of the 5 prefix bytes)")  # type: ignore[union-attr]

    def test_a_raised_limit_applies_to_the_next_prefix(self) -> None:
        decoder = MessageDecoder(4)
        self.assertEqual(decoder.feed(frame_message(b"1234")), [b"1234"])
        decoder.max_message_size = 10
        self.assertEqual(decoder.feed(frame_message(b"1234567890")), [b"1234567890"])
        self.assertTrue(decoder.in_message is False)

    def test_a_negative_limit_is_refused(self) -> None:
        with self.assertRaises(ValueError):
            MessageDecoder(-1)


class TimeoutTests(SynchronousTestCase):
    def test_every_unit(self) -> None:
        for value, seconds in [
            (b"1H", 3600.0),
            (b"2M", 120.0),
            (b"3S", 3.0),
            (b"250m", 0.25),
            (b"60000000u", 60.0),
            (b"5n", 5e-9),
            (b"99999999H", MAX_TIMEOUT),
        ]:
            self.assertEqual(parse_timeout(value), seconds, value)

    def test_malformed_values_are_refused_with_the_rule(self) -> None:
        for value in [b"", b"1", b"S", b"123456789S", b"-1S", b"1.5S", b" 1S", b"1s", b"1SS"]:
            with self.assertRaises(ValueError) as caught:
                parse_timeout(value)
            self.assertIn("expected 1 to 8 digits and one of H M S m u n", str(caught.exception))

    @given(st.floats(0, 10**9, allow_nan=False))
    def test_format_rounds_up_into_a_valid_value(self, seconds: float) -> None:
        value = format_timeout(seconds)
        self.assertGreaterEqual(parse_timeout(value), seconds - 1e-9)

    def test_format_picks_the_finest_unit(self) -> None:
        self.assertEqual(format_timeout(1.5), b"1500000u")
        self.assertEqual(format_timeout(0.25), b"250000u")
        self.assertEqual(format_timeout(3600 * 24 * 365), b"31536000S")
        self.assertEqual(format_timeout(3600 * 24 * 3650), b"5256000M")
        with self.assertRaises(ValueError):
            format_timeout(-1)


class GrpcMessageTests(SynchronousTestCase):
    @given(st.text())
    def test_percent_encoding_round_trips(self, text: str) -> None:
        encoded = encode_grpc_message(text)
        self.assertTrue(all(0x20 <= byte <= 0x7E for byte in encoded))
        self.assertEqual(decode_grpc_message(encoded), text)

    def test_printable_ascii_is_sent_as_it_is_and_the_rest_is_escaped(self) -> None:
        self.assertEqual(encode_grpc_message("plain text: ok"), b"plain text: ok")
        self.assertEqual(encode_grpc_message("100% sure"), b"100%25 sure")
        self.assertEqual(encode_grpc_message("caf\u00e9\n"), b"caf%C3%A9%0A")

    def test_malformed_escapes_are_kept(self) -> None:
        self.assertEqual(decode_grpc_message(b"50%zz done %4"), "50%zz done %4")


class MetadataTests(SynchronousTestCase):
    def test_binary_values_are_base64_with_or_without_padding(self) -> None:
        headers = [
            (b":path", b"/a.B/C"),
            (b"content-type", b"application/grpc"),
            (b"grpc-timeout", b"1S"),
            (b"trace-bin", base64.b64encode(b"\x00\xff\x10")),
            (b"other-bin", b"AAE"),
            (b"x-user", b"alice"),
        ]
        self.assertEqual(
            decode_metadata(headers),
            (("trace-bin", b"\x00\xff\x10"), ("other-bin", b"\x00\x01"), ("x-user", "alice")),
        )

    def test_invalid_base64_names_the_key(self) -> None:
        with self.assertRaises(ValueError) as caught:
            decode_metadata([(b"trace-bin", b"not base64!")])
        self.assertEqual(str(caught.exception), "metadata 'trace-bin' is not valid base64")

    @given(st.binary(max_size=64))
    def test_binary_metadata_round_trips(self, value: bytes) -> None:
        fields = encode_metadata([("blob-bin", value)])
        self.assertNotIn(b"=", fields[0][1])
        self.assertEqual(decode_metadata(fields), (("blob-bin", value),))

    def test_bad_outgoing_metadata_is_refused(self) -> None:
        for pair in [
            ("Upper", "x"),
            ("grpc-status", "0"),
            ("", "x"),
            ("key", "line\nbreak"),
            ("key", "caf\u00e9"),
            ("key-bin", "text"),
            ("key", b"bytes"),
        ]:
            with self.assertRaises(ValueError, msg=repr(pair)):
                encode_metadata([pair])

    def test_grpc_content_types(self) -> None:
        for value in [b"application/grpc", b"application/grpc+proto", b"Application/GRPC; charset=x"]:
            self.assertTrue(is_grpc_content_type(value), value)
        for value in [b"application/json", b"application/grpc+json", b"application/grpcx", b""]:
            self.assertFalse(is_grpc_content_type(value), value)


class StatusTests(SynchronousTestCase):
    def test_every_error_code_has_a_status(self) -> None:
        self.assertEqual(set(STATUS_FOR_CODE), set(ErrorCode))

    def test_a_spear_error_keeps_its_message_and_sends_its_code(self) -> None:
        error = status_for_error(UnknownTask("no task 'x'"))
        self.assertEqual(error.status, StatusCode.NOT_FOUND)
        self.assertEqual(error.message, "no task 'x'")
        self.assertEqual(error.metadata, ((ERROR_CODE_KEY, "1302"),))

    def test_anything_else_is_unknown_without_details(self) -> None:
        error = status_for_error(KeyError("secret internals"))
        self.assertEqual(error.status, StatusCode.UNKNOWN)
        self.assertNotIn("secret", error.message)

    def test_a_grpc_error_is_itself_and_never_ok(self) -> None:
        error = GrpcError(StatusCode.ABORTED, "stop")
        self.assertIs(status_for_error(error), error)
        self.assertEqual(str(error), "ABORTED: stop")
        with self.assertRaises(ValueError):
            GrpcError(StatusCode.OK)


class ConfigTests(SynchronousTestCase):
    def test_read_from_configuration_with_defaults(self) -> None:
        config = structure({"max_receive_message_size": 1024, "shutdown_grace": 2}, BridgeConfig)
        self.assertEqual(config, BridgeConfig(max_receive_message_size=1024, shutdown_grace=2.0))

    def test_an_unknown_key_is_refused_with_a_suggestion(self) -> None:
        with self.assertRaises(InvalidMessage) as caught:
            structure({"max_concurent_streams": 5}, BridgeConfig)
        self.assertIn("did you mean 'max_concurrent_streams'", str(caught.exception))

    def test_bad_values_are_refused_by_name(self) -> None:
        for changes in [
            {"max_concurrent_streams": 0},
            {"stream_window_size": 1000},
            {"connection_window_size": 2**31},
            {"reset_rate": 0},
            {"max_receive_message_size": -1},
        ]:
            with self.assertRaises(ValueError) as caught:
                BridgeConfig(**changes)  # type: ignore[arg-type]
            self.assertIn(next(iter(changes)), str(caught.exception))
        with self.assertRaises(ValueError) as caught:
            BridgeConfig(stream_window_size=2**20, connection_window_size=2**17)
        self.assertIn("must be at least stream_window_size", str(caught.exception))

    def test_every_setting_is_documented(self) -> None:
        for field in attrs.fields(BridgeConfig):
            self.assertTrue(field.metadata.get("doc"), field.name)


def context(*metadata: tuple[str, str | bytes]) -> CallContext:
    return CallContext(method="/m.S/M", peer="p", connection_id="c", stream_id=1, metadata=metadata)


class CallerTokenTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.authenticator = BearerTokenAuthenticator({"alice": "token-of-alice", "bob": "token-of-bob"})

    def test_it_provides_the_interface(self) -> None:
        self.assertTrue(verifyObject(ICallAuthenticator, self.authenticator))
        self.assertTrue(verifyObject(ICallAuthenticator, allow_any_caller))

    def test_the_token_names_the_caller(self) -> None:
        for token, name in [("token-of-alice", "alice"), ("token-of-bob", "bob")]:
            checked = self.authenticator.authenticate(context(("authorization", f"Bearer {token}")))
            self.assertEqual(self.successResultOf(checked), name)
        checked = self.authenticator.authenticate(context(("authorization", "bearer  token-of-bob ")))
        self.assertEqual(self.successResultOf(checked), "bob")

    def test_missing_and_wrong_tokens(self) -> None:
        self.failureResultOf(self.authenticator.authenticate(context()), NotAuthenticated)
        self.failureResultOf(
            self.authenticator.authenticate(context(("authorization", "Basic token-of-alice"))),
            NotAuthenticated,
        )
        failure = self.failureResultOf(
            self.authenticator.authenticate(context(("authorization", "Bearer token-of-carol"))),
            AuthenticationFailed,
        )
        self.assertNotIn("token-of", str(failure.value))

    def test_weak_tokens_are_refused_at_configuration(self) -> None:
        with self.assertRaises(ValueError) as caught:
            BearerTokenAuthenticator({"eve": "short"})
        self.assertIn("eve", str(caught.exception))
        self.assertNotIn("short'", str(caught.exception))

    def test_bearer_token_reads_only_text_metadata(self) -> None:
        self.assertIsNone(bearer_token(context(("authorization-bin", b"Bearer x"))))
        self.assertEqual(bearer_token(context(("authorization", "Bearer abc"))), "abc")


class RegistryTests(SynchronousTestCase):
    def test_paths_are_checked_and_served_once(self) -> None:
        registry = MethodRegistry()
        from spear_twisted.bridge import spear_pb2 as pb

        registry.add_unary(
            "/a.B/C", pb.StatusRequest, pb.StatusReply, lambda request, context: pb.StatusReply()
        )
        self.assertEqual(registry.paths, ("/a.B/C",))
        self.assertIsNone(registry.lookup("/a.B/D"))
        with self.assertRaises(ValueError):
            registry.add_unary("/a.B/C", pb.StatusRequest, pb.StatusReply, lambda request, context: None)
        for path in ["a.B/C", "/a.B", "/a/B/C"]:
            with self.assertRaises(ValueError):
                registry.add_unary(path, pb.StatusRequest, pb.StatusReply, lambda request, context: None)
