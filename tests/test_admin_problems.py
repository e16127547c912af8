"""Errors of the admin endpoint: the HTTP status of every code, the JSON document, the bearer token."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from spear_twisted.admin.bearer import CHALLENGE, CHALLENGE_INVALID, BearerToken, challenge_for
from spear_twisted.admin.problems import HTTP_STATUS, error_document, http_status_for
from spear_twisted.errors import (
    AuthenticationFailed,
    ErrorCode,
    InstanceLost,
    InvalidMessage,
    NotAuthenticated,
    UnknownTask,
)
from spear_twisted.wire import RuntimeInstanceId, RuntimeType


class HttpStatusTests(SynchronousTestCase):
    def test_every_error_code_has_an_error_status(self) -> None:
        self.assertEqual(set(HTTP_STATUS), set(ErrorCode))
        for code, status in HTTP_STATUS.items():
            self.assertTrue(400 <= status <= 599, code)

    def test_each_error_class_has_its_fitting_status(self) -> None:
        expected = {
            ErrorCode.UNKNOWN_TASK: 404,
            ErrorCode.UNKNOWN_ROUTE: 404,
            ErrorCode.INVALID_JSON: 400,
            ErrorCode.INVALID_MESSAGE: 400,
            ErrorCode.MESSAGE_TOO_LARGE: 413,
            ErrorCode.NOT_AUTHENTICATED: 401,
            ErrorCode.AUTHENTICATION_FAILED: 401,
            ErrorCode.METHOD_NOT_ALLOWED: 405,
            ErrorCode.NO_INSTANCE_AVAILABLE: 503,
            ErrorCode.SHUTTING_DOWN: 503,
            ErrorCode.SERVER_BUSY: 503,
            ErrorCode.EXECUTION_TIMEOUT: 504,
            ErrorCode.REQUEST_TIMEOUT: 504,
            ErrorCode.INSTANCE_LOST: 502,
            ErrorCode.CONNECTION_LOST: 502,
            ErrorCode.INTERNAL_ERROR: 500,
        }
        self.assertEqual({code: http_status_for(code) for code in expected}, expected)

    def test_a_code_this_version_does_not_know_is_500(self) -> None:
        self.assertEqual(http_status_for(4242), 500)


class ErrorDocumentTests(SynchronousTestCase):
    def test_the_document_has_the_code_its_name_and_the_message(self) -> None:
        self.assertEqual(
            error_document(UnknownTask("no task 'nope' is configured")),
            {"error": {"code": 1302, "name": "UNKNOWN_TASK", "message": "no task 'nope' is configured"}},
        )

    def test_a_schema_error_lists_every_problem_with_its_path(self) -> None:
        error = InvalidMessage([("args[1]", "expected string, found integer"), ("mode", "unknown variant")])
        self.assertEqual(
            error_document(error)["error"]["problems"],
            [
                {"path": "args[1]", "reason": "expected string, found integer"},
                {"path": "mode", "reason": "unknown variant"},
            ],
        )

    def test_the_instance_and_details_are_given_when_known(self) -> None:
        instance = RuntimeInstanceId(RuntimeType.PROCESS, "echo-1")
        document = error_document(
            InstanceLost("the instance exited", instance_id=instance, details="signal 9")
        )
        self.assertEqual(document["error"]["instance_id"], str(instance))
        self.assertEqual(document["error"]["details"], "signal 9")
        self.assertEqual(document["error"]["name"], "INSTANCE_LOST")


class BearerTokenTests(SynchronousTestCase):
    token = BearerToken("s3cret-token")

    def test_the_right_token_passes(self) -> None:
        self.assertIsNone(self.token.check([b"Bearer s3cret-token"]))
        self.assertIsNone(self.token.check([b"bearer  s3cret-token "]))

    def test_no_header_is_not_authenticated(self) -> None:
        for header in (None, []):
            self.assertIsInstance(self.token.check(header), NotAuthenticated)

    def test_another_scheme_or_no_credentials_is_not_authenticated(self) -> None:
        for value in (b"Basic czNjcmV0", b"Bearer", b"Bearer   ", b"s3cret-token"):
            self.assertIsInstance(self.token.check([value]), NotAuthenticated, value)

    def test_several_headers_are_refused(self) -> None:
        self.assertIsInstance(
            self.token.check([b"Bearer s3cret-token", b"Bearer s3cret-token"]), NotAuthenticated
        )

    def test_a_wrong_token_fails_without_echoing_either_token(self) -> None:
        for value in (b"Bearer s3cret-toke", b"Bearer s3cret-token2", b"Bearer S3CRET-TOKEN"):
            error = self.token.check([value])
            self.assertIsInstance(error, AuthenticationFailed)
            self.assertNotIn("s3cret", str(error).lower())

    def test_the_challenge_says_invalid_token_only_for_a_wrong_token(self) -> None:
        self.assertEqual(challenge_for(NotAuthenticated("m")), CHALLENGE)
        self.assertEqual(challenge_for(AuthenticationFailed("m")), CHALLENGE_INVALID)

    def test_the_token_is_masked_in_its_repr(self) -> None:
        self.assertNotIn("s3cret", repr(self.token))

    def test_an_empty_or_unprintable_token_is_refused(self) -> None:
        for token in ("", "  ", "a\tb", "a\x00b"):
            self.assertRaises(ValueError, BearerToken, token)

    def test_blanks_around_the_token_are_not_part_of_it(self) -> None:
        """HTTP strips them from a header value, so they could never match."""
        self.assertIsNone(BearerToken(" s3cret-token\n").check([b"Bearer s3cret-token"]))
