"""Configuration classes read through the one converter: defaults, unknown keys, paths."""

from __future__ import annotations

import attrs
from twisted.trial.unittest import SynchronousTestCase

from spear_twisted.errors import InvalidMessage
from spear_twisted.settings import field_doc, setting
from spear_twisted.wire.codec import is_settings_class, structure


@attrs.frozen
class Inner:
    __spear_settings__ = True

    timeout: float = setting(5.0, doc="Seconds to wait.")
    retries: int = setting(3, doc="How many times to try.")


@attrs.frozen
class Outer:
    __spear_settings__ = True

    name: str = setting(doc="A required name.")
    inner: Inner = setting(attrs.Factory(Inner), doc="The inner table.")
    pair: tuple[int, int] = setting((1, 2), doc="Two numbers.")
    items: tuple[Inner, ...] = setting((), doc="A list of tables.")


class SettingsTests(SynchronousTestCase):
    def test_missing_keys_take_their_defaults(self) -> None:
        self.assertEqual(structure({"name": "x"}, Outer), Outer("x"))

    def test_an_integer_is_accepted_for_a_float(self) -> None:
        self.assertEqual(structure({"name": "x", "inner": {"timeout": 2}}, Outer).inner.timeout, 2.0)

    def test_a_float_is_refused_for_an_integer_with_its_path(self) -> None:
        with self.assertRaises(InvalidMessage) as caught:
            structure({"name": "x", "inner": {"retries": 2.5}}, Outer)
        self.assertEqual(
            caught.exception.problems,
            (("inner.retries", "expected integer, found floating point number 2.5"),),
        )

    def test_a_boolean_is_not_an_integer(self) -> None:
        with self.assertRaises(InvalidMessage) as caught:
            structure({"name": "x", "inner": {"retries": True}}, Outer)
        self.assertEqual(caught.exception.problems[0][0], "inner.retries")

    def test_an_unknown_key_is_an_error_that_suggests_the_close_one(self) -> None:
        with self.assertRaises(InvalidMessage) as caught:
            structure({"name": "x", "inner": {"timeuot": 1}}, Outer)
        [(path, reason)] = caught.exception.problems
        self.assertEqual(path, "inner.timeuot")
        self.assertIn("did you mean 'timeout'", reason)

    def test_an_unknown_key_with_no_close_match_lists_the_known_keys(self) -> None:
        with self.assertRaises(InvalidMessage) as caught:
            structure({"name": "x", "zzz": 1}, Outer)
        self.assertIn("known keys: name, inner, pair, items", caught.exception.problems[0][1])

    def test_a_missing_required_key_is_named(self) -> None:
        with self.assertRaises(InvalidMessage) as caught:
            structure({}, Outer)
        self.assertEqual(caught.exception.problems, (("name", "missing key"),))

    def test_every_problem_is_reported_with_its_index(self) -> None:
        with self.assertRaises(InvalidMessage) as caught:
            structure({"name": 1, "items": [{}, {"retries": "3"}]}, Outer)
        paths = [path for path, _ in caught.exception.problems]
        self.assertEqual(paths, ["name", "items[1].retries"])

    def test_a_fixed_tuple_needs_exactly_its_items(self) -> None:
        self.assertEqual(structure({"name": "x", "pair": [3, 4]}, Outer).pair, (3, 4))
        with self.assertRaises(InvalidMessage) as caught:
            structure({"name": "x", "pair": [3]}, Outer)
        self.assertEqual(caught.exception.problems[0][0], "pair")

    def test_a_table_is_required_where_a_class_is_expected(self) -> None:
        with self.assertRaises(InvalidMessage) as caught:
            structure({"name": "x", "inner": 3}, Outer)
        self.assertEqual(caught.exception.problems[0][0], "inner")

    def test_a_validator_failure_is_reported(self) -> None:
        @attrs.frozen
        class Checked:
            __spear_settings__ = True
            size: int = setting(1, doc="Positive.", validator=attrs.validators.gt(0))

        with self.assertRaises(InvalidMessage) as caught:
            structure({"size": 0}, Checked)
        self.assertIn("size", caught.exception.problems[0][1])

    def test_settings_classes_are_recognised_and_documented(self) -> None:
        self.assertTrue(is_settings_class(Outer))
        self.assertFalse(is_settings_class(int))
        self.assertEqual(field_doc(attrs.fields(Inner).timeout), "Seconds to wait.")
