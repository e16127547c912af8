"""Configuration classes read through the one converter: defaults, unknown keys, paths."""

from __future__ import annotations

import attrs
from twisted.trial.unittest import SynchronousTestCase

from spear_twisted.errors import InvalidMessage
from spear_twisted.settings import (
    field_doc,
    is_settings_class,
    not_negative,
    positive,
    positive_or_off,
    setting,
    settings_reference,
    valid_port_range,
)
from spear_twisted.wire.codec import structure


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


@attrs.frozen
class Optional:
    __spear_settings__ = True

    #: Off (None) is a value, not the default: only ``false`` can ask for it.
    timeout: float | None = setting(30.0, doc="Seconds, or off.", validator=positive_or_off)
    names: tuple[str, ...] | None = setting(("a",), doc="Names, or off.")
    #: Unset by default: leaving the key out is how to leave it unset.
    path: str | None = setting(None, doc="A path.")
    flag: bool | None = setting(True, doc="A boolean: false is a value, not off.")


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


class TurningOffTests(SynchronousTestCase):
    """TOML has no null: ``false`` turns off an optional setting whose default is not unset."""

    def test_false_turns_the_setting_off(self) -> None:
        self.assertEqual(structure({}, Optional), Optional())
        off = structure({"timeout": False, "names": False}, Optional)
        self.assertEqual((off.timeout, off.names), (None, None))
        self.assertEqual(structure({"timeout": 2, "names": ["b"]}, Optional), Optional(2.0, ("b",)))

    def test_a_wrong_value_says_that_false_is_accepted(self) -> None:
        with self.assertRaises(InvalidMessage) as caught:
            structure({"timeout": "soon", "names": "b"}, Optional)
        self.assertEqual(
            caught.exception.problems,
            (
                ("timeout", "expected number or false, found string"),
                ("names", "expected array or false, found string"),
            ),
        )
        with self.assertRaises(InvalidMessage) as caught:
            structure({"timeout": True}, Optional)
        self.assertEqual(caught.exception.problems, (("timeout", "expected number or false, found boolean"),))
        with self.assertRaises(InvalidMessage) as caught:
            structure({"names": ["b", 1]}, Optional)
        self.assertEqual(caught.exception.problems, (("names[1]", "expected string, found integer"),))

    def test_an_out_of_range_value_says_that_false_is_accepted(self) -> None:
        with self.assertRaises(InvalidMessage) as caught:
            structure({"timeout": -1}, Optional)
        self.assertEqual(
            caught.exception.problems,
            # Under the key the validator names, as every settings class reports it.
            (("timeout", "must be positive, or false (None) to turn it off, not -1.0"),),
        )

    def test_a_setting_unset_by_default_and_a_boolean_take_no_false_for_off(self) -> None:
        with self.assertRaises(InvalidMessage) as caught:
            structure({"path": False}, Optional)
        self.assertEqual(caught.exception.problems, (("path", "expected string, found boolean"),))
        self.assertIs(structure({"flag": False}, Optional).flag, False)

    def test_the_reference_shows_which_settings_false_turns_off(self) -> None:
        kinds = {row.key: row.kind for row in settings_reference(Optional)}
        self.assertEqual(
            kinds,
            {
                "timeout": "number, or false (off)",
                "names": "array of strings, or false (off)",
                "path": "string",
                "flag": "boolean",
            },
        )


@attrs.frozen
class Bounded:
    count: int = attrs.field(default=1, validator=positive)
    delay: float = attrs.field(default=0.0, validator=not_negative)
    ports: tuple[int, ...] = attrs.field(default=(9100, 9999), validator=valid_port_range)


class ValidatorTests(SynchronousTestCase):
    def assertRefused(self, message: str, **values: object) -> None:
        with self.assertRaises(ValueError) as caught:
            Bounded(**values)  # type: ignore[arg-type]
        self.assertEqual(str(caught.exception), message)

    def test_positive_refuses_zero_negative_and_none(self) -> None:
        self.assertEqual(Bounded(count=3).count, 3)
        self.assertRefused("count must be positive, not 0", count=0)
        self.assertRefused("count must be positive, not -2", count=-2)
        self.assertRefused("count must be positive, not None", count=None)

    def test_not_negative_accepts_zero_and_refuses_below_and_none(self) -> None:
        self.assertEqual(Bounded(delay=0).delay, 0)
        self.assertRefused("delay must not be negative, not -0.5", delay=-0.5)
        self.assertRefused("delay must not be negative, not None", delay=None)

    def test_a_port_range_is_two_ports_low_to_high(self) -> None:
        self.assertEqual(Bounded(ports=(80, 80)).ports, (80, 80))
        self.assertRefused("ports must be (low, high), not (1, 2, 3)", ports=(1, 2, 3))
        self.assertRefused("ports ports must be within 1..65535, not (0, 10)", ports=(0, 10))
        self.assertRefused("ports ports must be within 1..65535, not (10, 65536)", ports=(10, 65536))
        self.assertRefused("ports is empty: 9999 > 9100", ports=(9999, 9100))
