"""The spearlet's configuration file: defaults, every kind of error with its path, the built-in default."""

from __future__ import annotations

import os
import sys
import textwrap

import attrs
from twisted.trial.unittest import SynchronousTestCase

from spear_twisted.config import (
    AdminConfig,
    ConfigError,
    SpearConfig,
    TaskConfig,
    default_config,
    load_config,
    loads_config,
    parse_config,
)
from spear_twisted.connections import DuplicatePolicy
from spear_twisted.runtime import InstanceConfig, ResourceLimits, RestartPolicy
from spear_twisted.settings import field_doc, settings_reference
from spear_twisted.wire import RuntimeType

FULL = """
log_level = "warn"
runtime_dir = "/run/spear"

[connections]
endpoints = ["tcp:9100:interface=127.0.0.1", "unix:/run/spear/agents.sock"]
port_range = [9200, 9299]
auth_timeout = 10
heartbeat_interval = 5
heartbeat_timeout = 15.5
duplicate_policy = "replace-old"

[monitoring]
enable_message_tracking = false

[runtime]
launcher = "python"

[runtime.backoff]
min_delay = 0.5

[admin]
endpoint = "tcp:8000:interface=127.0.0.1"

[[tasks]]
id = "resize"
executable = "/usr/bin/python3"
args = ["-m", "resizer"]
env = { MODE = "fast" }
working_dir = "/srv/resizer"
min_instances = 2
max_instances = 8
max_concurrent_requests = 4
request_timeout = 12.5
idle_timeout = 60
idempotent = true
restart_policy = "always"
transports = ["tcp"]

[tasks.limits]
max_memory_bytes = 536870912
max_cpu_seconds = 100

[[tasks]]
id = "echo"
executable = "echo"
"""


def problems(text: str) -> list[str]:
    """The lines of the error ``text`` gives."""
    try:
        loads_config(text, "spear.toml")
    except ConfigError as e:
        return str(e).splitlines()
    raise AssertionError("the configuration was accepted")


TASK = '[[tasks]]\nid = "t"\nexecutable = "/bin/true"\n'


class LoadingTests(SynchronousTestCase):
    def test_every_section_is_read(self) -> None:
        config = loads_config(FULL)
        self.assertEqual(config.log_level, "warn")
        self.assertEqual(config.runtime_dir, "/run/spear")
        self.assertEqual(config.connections.endpoints[1], "unix:/run/spear/agents.sock")
        self.assertEqual(config.connections.port_range, (9200, 9299))
        self.assertEqual(config.connections.heartbeat_timeout, 15.5)
        self.assertIs(config.connections.duplicate_policy, DuplicatePolicy.REPLACE_OLD)
        self.assertFalse(config.monitoring.enable_message_tracking)
        self.assertEqual(config.runtime.launcher, "python")
        self.assertEqual(config.runtime.backoff.min_delay, 0.5)
        self.assertEqual(config.runtime.backoff.max_delay, 60.0)
        self.assertEqual(config.admin.endpoint, "tcp:8000:interface=127.0.0.1")
        resize, echo = config.tasks
        self.assertEqual(resize.args, ("-m", "resizer"))
        self.assertEqual(resize.env, {"MODE": "fast"})
        self.assertEqual(
            (resize.min_instances, resize.max_instances, resize.max_concurrent_requests), (2, 8, 4)
        )
        self.assertEqual((resize.request_timeout, resize.idle_timeout), (12.5, 60.0))
        self.assertTrue(resize.idempotent)
        self.assertIs(resize.restart_policy, RestartPolicy.ALWAYS)
        self.assertEqual(resize.transports, ("tcp",))
        self.assertEqual(resize.limits, ResourceLimits(max_memory_bytes=512 * 2**20, max_cpu_seconds=100))
        self.assertEqual(echo, TaskConfig(id="echo", executable="echo"))
        self.assertIs(config.task("echo"), echo)
        self.assertIsNone(config.task("nope"))

    def test_an_empty_file_is_every_default_and_no_task(self) -> None:
        self.assertEqual(loads_config(""), SpearConfig())
        self.assertEqual(SpearConfig().tasks, ())

    def test_a_task_gives_its_instances_configuration(self) -> None:
        resize = loads_config(FULL).tasks[0]
        self.assertEqual(
            resize.instance_config(),
            InstanceConfig(
                executable="/usr/bin/python3",
                args=("-m", "resizer"),
                env={"MODE": "fast"},
                working_dir="/srv/resizer",
                restart_policy=RestartPolicy.ALWAYS,
                transports=("tcp",),
            ),
        )

    def test_a_task_field_shared_with_the_instances_has_their_default_and_documentation(self) -> None:
        task_fields = attrs.fields_dict(TaskConfig)
        for field in attrs.fields(InstanceConfig):
            self.assertEqual(task_fields[field.name].default, field.default, field.name)
            self.assertEqual(field_doc(task_fields[field.name]), field_doc(field), field.name)

    def test_a_file_is_read_from_its_path(self) -> None:
        path = self.mktemp()
        with open(path, "w") as file:
            file.write(TASK)
        self.assertEqual(load_config(path).tasks[0].id, "t")


class TurningOffTests(SynchronousTestCase):
    """Settings that are on by default are turned off with ``false`` (TOML has no null)."""

    def test_false_turns_off_the_idle_connection_timeout_and_the_limits(self) -> None:
        config = loads_config(
            "[connections]\nconnection_timeout = false\n"
            + TASK
            + "[tasks.limits]\nmax_memory_bytes = false\nmax_open_files = false\n"
        )
        self.assertIsNone(config.connections.connection_timeout)
        self.assertIsNone(config.connections.channel_config().idle_timeout)
        limits = config.tasks[0].limits
        self.assertEqual((limits.max_memory_bytes, limits.max_open_files), (None, None))
        self.assertEqual(limits.as_rlimits(), {})

    def test_anything_else_that_is_not_the_setting_says_what_is_accepted(self) -> None:
        self.assertEqual(
            problems("[connections]\nconnection_timeout = true\n"),
            ["spear.toml: connections.connection_timeout: expected number or false, found boolean"],
        )
        self.assertEqual(
            problems('[connections]\nconnection_timeout = "never"\n'),
            ["spear.toml: connections.connection_timeout: expected number or false, found string"],
        )
        self.assertEqual(
            problems("[connections]\nconnection_timeout = 0\n"),
            [
                "spear.toml: connections.connection_timeout: must be positive, or false (None) to turn it"
                " off, not 0.0"
            ],
        )

    def test_a_setting_unset_by_default_is_left_out_not_false(self) -> None:
        self.assertEqual(
            problems(TASK + "[tasks.limits]\nmax_processes = false\n"),
            ["spear.toml: tasks[0].limits.max_processes: expected integer, found boolean"],
        )


class ErrorTests(SynchronousTestCase):
    def test_a_wrong_type_names_the_file_the_key_path_and_what_was_expected(self) -> None:
        self.assertEqual(
            problems(TASK + 'max_instances = "2"\n'),
            ["spear.toml: tasks[0].max_instances: expected integer, found string"],
        )

    def test_an_invalid_value_is_reported_under_its_key(self) -> None:
        self.assertEqual(
            problems(TASK + "max_instances = 0\n"),
            ["spear.toml: tasks[0].max_instances: must be positive, not 0"],
        )
        self.assertEqual(
            problems(TASK + "[tasks.limits]\nmax_open_files = -1\n"),
            [
                "spear.toml: tasks[0].limits.max_open_files: must be positive, or false (None) to turn it"
                " off, not -1"
            ],
        )

    def test_an_unknown_key_suggests_the_close_one(self) -> None:
        self.assertEqual(
            problems(TASK + "max_instance = 2\n"),
            ["spear.toml: tasks[0].max_instance: unknown key (did you mean 'max_instances'?)"],
        )

    def test_every_problem_is_listed(self) -> None:
        lines = problems(
            '[admin]\nport = 1\n[[tasks]]\nid = "x"\n[[tasks]]\nid = 2\nexecutable = "/bin/true"\n'
        )
        self.assertEqual(
            lines,
            [
                "spear.toml: admin.port: unknown key; known keys: enabled, endpoint, token, token_file",
                "spear.toml: tasks[0].executable: missing key",
                "spear.toml: tasks[1].id: expected string, found integer",
            ],
        )

    def test_a_value_out_of_its_choices_is_named(self) -> None:
        self.assertEqual(
            problems('log_level = "loud"\n'),
            ["spear.toml: log_level: must be one of debug, info, warn, error, critical, not 'loud'"],
        )

    def test_rules_across_keys_name_their_table(self) -> None:
        self.assertEqual(
            problems(TASK + "min_instances = 3\nmax_instances = 2\n"),
            ["spear.toml: tasks[0]: min_instances (3) must not exceed max_instances (2)"],
        )
        self.assertEqual(
            problems(TASK + TASK),
            ["spear.toml: (top level): task id 't' is used twice"],
        )

    def test_a_bad_task_id_is_refused(self) -> None:
        [line] = problems('[[tasks]]\nid = "a b"\nexecutable = "/bin/true"\n')
        self.assertIn("tasks[0].id: 'a b' must be 1 to 64 letters", line)

    def test_only_process_instances_can_be_run(self) -> None:
        [line] = problems(TASK + 'runtime_type = "wasm"\n')
        self.assertEqual(
            line,
            'spear.toml: tasks[0].runtime_type: "wasm" is not available: '
            'this spearlet runs "process" instances',
        )
        [line] = problems(TASK + 'runtime_type = "vm"\n')
        self.assertIn('tasks[0].runtime_type: unknown variant "vm"', line)

    def test_an_unknown_transport_is_refused(self) -> None:
        self.assertEqual(
            problems(TASK + 'transports = ["pigeon"]\n'),
            [
                "spear.toml: tasks[0].transports: unknown transport 'pigeon'; "
                "expected one of unix, tcp, grpc, memory"
            ],
        )

    def test_rules_of_the_connection_settings_apply(self) -> None:
        self.assertEqual(
            problems('[connections]\nlisten_addr = "0.0.0.0"\n'),
            [
                "spear.toml: connections.listen_addr: '0.0.0.0' is not a loopback address; "
                "set allow_remote to use it"
            ],
        )

    def test_invalid_toml_is_reported_with_its_position(self) -> None:
        [line] = problems('log_level = "info"\nlog_level = "warn"\n')
        self.assertTrue(line.startswith("spear.toml: (top level): invalid TOML: "), line)
        self.assertIn("line 2", line)

    def test_a_file_that_cannot_be_read_is_named(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            load_config("/no/such/spear.toml")
        self.assertEqual(
            str(caught.exception),
            "/no/such/spear.toml: (top level): cannot read the file: No such file or directory",
        )

    def test_a_file_that_is_not_utf8_is_refused(self) -> None:
        path = self.mktemp()
        with open(path, "wb") as file:
            file.write(b'log_level = "\xff"\n')
        with self.assertRaises(ConfigError) as caught:
            load_config(path)
        self.assertIn(f"{path}: (top level): not UTF-8 text", str(caught.exception))

    def test_the_problems_are_kept_as_data(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            parse_config({"tasks": [{"id": "x", "executable": 3}]}, "here")
        self.assertEqual(caught.exception.source, "here")
        self.assertEqual(
            caught.exception.problems, (("tasks[0].executable", "expected string, found integer"),)
        )


class AdminTests(SynchronousTestCase):
    def test_the_admin_endpoint_is_on_localhost_by_default(self) -> None:
        admin = AdminConfig()
        self.assertEqual(admin.endpoint, "tcp:7732:interface=127.0.0.1")
        self.assertTrue(admin.enabled)
        self.assertIsNone(admin.bearer_token())

    def test_the_token_is_read_from_its_file(self) -> None:
        path = self.mktemp()
        with open(path, "w") as file:
            file.write("  s3cret-token\n")
        self.assertEqual(AdminConfig(token_file=path).bearer_token(), "s3cret-token")
        self.assertEqual(AdminConfig(token="inline").bearer_token(), "inline")

    def test_a_missing_or_empty_token_file_is_an_error(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            AdminConfig(token_file="/no/such/token").bearer_token()
        self.assertIn(
            "token_file: cannot read /no/such/token: No such file or directory", str(caught.exception)
        )
        path = self.mktemp()
        open(path, "w").close()
        with self.assertRaises(ConfigError) as caught:
            AdminConfig(token_file=path).bearer_token()
        self.assertIn("is empty", str(caught.exception))

    def test_token_and_token_file_exclude_each_other(self) -> None:
        self.assertIn(
            "set token or token_file, not both",
            problems('[admin]\ntoken = "a"\ntoken_file = "/x"\n')[0],
        )

    def test_an_endpoint_must_be_a_description(self) -> None:
        self.assertIn("is not an endpoint description", problems('[admin]\nendpoint = "7732"\n')[0])


class DefaultTests(SynchronousTestCase):
    def test_the_default_runs_the_packaged_echo_agent(self) -> None:
        config = default_config()
        [echo] = config.tasks
        self.assertEqual(echo.id, "echo")
        self.assertEqual(echo.executable, sys.executable)
        self.assertEqual(echo.args, ("-m", "spear_twisted.agent.echo"))
        self.assertIs(echo.runtime_type, RuntimeType.PROCESS)
        self.assertIn("PYTHONPATH", echo.inherit_env)

    def test_the_default_prefers_unix_sockets_and_stays_on_localhost(self) -> None:
        config = default_config()
        self.assertEqual(config.tasks[0].transports, ("unix", "tcp"))
        self.assertEqual(config.connections.listen_addr, "127.0.0.1")
        self.assertFalse(config.connections.allow_remote)
        self.assertIn("interface=127.0.0.1", config.admin.endpoint)

    def test_the_default_is_a_valid_file_too(self) -> None:
        """What the built-in default says can be written in a file."""
        echo = default_config().tasks[0]
        text = (
            f'[[tasks]]\nid = "echo"\nexecutable = "{echo.executable}"\n'
            f'args = ["-m", "spear_twisted.agent.echo"]\ninherit_env = {list(echo.inherit_env)!r}\n'
            'transports = ["unix", "tcp"]\n'
            f"max_instances = {echo.max_instances}\n"
            f"max_concurrent_requests = {echo.max_concurrent_requests}\n"
        ).replace("'", '"')
        self.assertEqual(loads_config(text), default_config())


class ReferenceTests(SynchronousTestCase):
    def test_every_key_is_documented_with_its_path(self) -> None:
        rows = settings_reference(SpearConfig)
        keys = [row.key for row in rows]
        for key in (
            "log_level",
            "connections.port_range",
            "connections.tls_cert_path",
            "runtime.backoff.min_delay",
            "admin.token_file",
            "tasks[].max_instances",
            "tasks[].limits.max_memory_bytes",
            "tasks[].executable",
        ):
            self.assertIn(key, keys)
        for row in rows:
            self.assertTrue(row.doc, f"{row.key} has no documentation")

    def test_tables_and_defaults_are_shown(self) -> None:
        rows = {row.key: row for row in settings_reference(SpearConfig)}
        self.assertEqual(rows["tasks"].kind, "array of tables")
        self.assertEqual(rows["connections"].kind, "table")
        self.assertEqual(rows["tasks[].id"].default, "(required)")
        self.assertEqual(rows["tasks[].min_instances"].default, "1")
        self.assertEqual(rows["tasks[].restart_policy"].default, '"on-failure"')
        self.assertEqual(rows["connections.port_range"].default, "[9100, 9999]")
        self.assertEqual(rows["runtime_dir"].default, "(unset)")
        self.assertEqual(rows["admin.enabled"].default, "true")
        self.assertEqual(rows["tasks[].inherit_env"].kind, "array of strings")
        self.assertEqual(rows["tasks[].env"].kind, "table of strings")
        self.assertEqual(rows["connections.connection_timeout"].kind, "number, or false (off)")
        self.assertEqual(rows["connections.connection_timeout"].default, "300")
        self.assertEqual(rows["tasks[].limits.max_memory_bytes"].kind, "integer, or false (off)")
        self.assertEqual(rows["tasks[].limits.max_open_files"].kind, "integer, or false (off)")
        # Unset by default: left out to leave it unset.
        self.assertEqual(rows["tasks[].limits.max_processes"].kind, "integer")

    def test_the_environment_does_not_leak_into_the_reference(self) -> None:
        rows = {row.key: row for row in settings_reference(SpearConfig)}
        self.assertNotIn(os.getcwd(), "".join(row.default for row in rows.values()))


class DocumentedExampleTests(SynchronousTestCase):
    def test_the_example_of_the_configuration_page_is_valid(self) -> None:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        with open(os.path.join(root, "docs", "configuration.rst")) as file:
            page = file.read()
        block = page.split(".. code-block:: toml\n", 1)[1].split("\nErrors\n", 1)[0]
        text = "\n".join(line[4:] for line in block.splitlines())
        config = loads_config(text, "configuration.rst")
        self.assertEqual([task.id for task in config.tasks], ["resize"])
        self.assertEqual(config.admin.token_file, "/etc/spear/admin-token")

    def test_the_turning_off_example_of_the_configuration_page_is_valid(self) -> None:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        with open(os.path.join(root, "docs", "configuration.rst")) as file:
            page = file.read()
        after = page.split("turned off with ``false``:\n\n.. code-block:: toml\n\n", 1)[1]
        block = after.split("\n\nAny other value", 1)[0]
        config = loads_config(textwrap.dedent(block), "configuration.rst")
        self.assertIsNone(config.connections.connection_timeout)
        [task] = config.tasks
        self.assertEqual((task.id, task.limits.max_memory_bytes), ("jvm", None))
        self.assertEqual(task.limits.max_open_files, 1024)
