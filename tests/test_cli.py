"""The ``spear`` command: parsing, the request it sends, exit statuses, the status table."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from spear_twisted import cli
from spear_twisted.config import DEFAULT_ADMIN_PORT
from tests.runtime_support import ROOT


def options(*argv: str) -> Any:
    return cli.parser().parse_args(list(argv))


class Captured:
    """Standard output and error of :func:`cli.main`, captured."""

    def __init__(self, test: SynchronousTestCase) -> None:
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()
        test.patch(sys, "stdout", self.stdout)
        test.patch(sys, "stderr", self.stderr)


class ParsingTests(SynchronousTestCase):
    def test_invoke_takes_the_task_the_command_and_its_arguments(self) -> None:
        parsed = options("invoke", "echo", "hello", "world", "--timeout", "2.5", "--env", "A=1=2")
        self.assertEqual((parsed.task, parsed.command, parsed.args), ("echo", "hello", ["world"]))
        self.assertEqual(parsed.timeout, 2.5)
        self.assertEqual(parsed.env, [("A", "1=2")])

    def test_arguments_that_begin_with_a_dash_follow_a_double_dash(self) -> None:
        parsed = options("invoke", "echo", "ls", "--", "-l", "--json")
        self.assertEqual(parsed.args, ["-l", "--json"])
        self.assertFalse(parsed.json)

    def test_the_admin_options_go_before_or_after_the_command(self) -> None:
        self.assertEqual(options("--admin", "http://h:1", "status").admin, "http://h:1")
        self.assertEqual(options("status", "--admin", "http://h:2").admin, "http://h:2")

    def test_bad_usage_exits_2_with_a_message(self) -> None:
        out = Captured(self)
        for argv in (
            [],
            ["invoke"],
            ["invoke", "echo"],
            ["invoke", "echo", "x", "--timeout", "0"],
            ["invoke", "echo", "x", "--timeout", "soon"],
            ["invoke", "echo", "x", "--env", "NOEQUALS"],
            ["frobnicate"],
        ):
            self.assertEqual(cli.main(argv), 2, argv)
        self.assertIn("expected a positive number of seconds", out.stderr.getvalue())
        self.assertIn("expected NAME=VALUE", out.stderr.getvalue())

    def test_a_bad_admin_url_exits_2(self) -> None:
        out = Captured(self)
        self.assertEqual(cli.main(["status", "--admin", "ftp://host/"]), 2)
        self.assertIn("the admin URL must be http://HOST:PORT", out.stderr.getvalue())


class ClientTests(SynchronousTestCase):
    def test_the_url_comes_from_the_option_then_the_environment_then_the_default(self) -> None:
        env = {"SPEAR_ADMIN_URL": "http://env:1"}
        self.assertEqual(
            cli.client_for(options("status", "--admin", "http://opt:2/"), env).url, "http://opt:2"
        )
        self.assertEqual(cli.client_for(options("status"), env).url, "http://env:1")
        self.assertEqual(cli.client_for(options("status"), {}).url, cli.DEFAULT_ADMIN_URL)
        # The CLI imports only the standard library: its default must follow the spearlet's.
        self.assertEqual(cli.DEFAULT_ADMIN_URL, f"http://127.0.0.1:{DEFAULT_ADMIN_PORT}")

    def test_the_token_comes_from_its_file_then_the_option_then_the_environment(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("from-file\n")
        env = {"SPEAR_ADMIN_TOKEN": "from-env"}
        self.assertEqual(
            cli.client_for(options("status", "--token-file", path, "--token", "x"), env).token, "from-file"
        )
        self.assertEqual(
            cli.client_for(options("status", "--token", "from-option"), env).token, "from-option"
        )
        self.assertEqual(cli.client_for(options("status"), env).token, "from-env")
        self.assertIsNone(cli.client_for(options("status"), {}).token)

    def test_an_unreadable_token_file_is_a_usage_error(self) -> None:
        with self.assertRaises(cli.CommandError) as raised:
            cli.client_for(options("status", "--token-file", self.mktemp()), {})
        self.assertEqual(raised.exception.exit_status, cli.EXIT_USAGE)

    def test_the_client_waits_longer_than_the_execution_may_take(self) -> None:
        self.assertEqual(cli.client_for(options("status"), {}).timeout, cli.DEFAULT_HTTP_TIMEOUT)
        long = options("invoke", "t", "c", "--timeout", "3600")
        self.assertEqual(cli.client_for(long, {}).timeout, 3600 + cli.TIMEOUT_MARGIN)
        explicit = options("invoke", "t", "c", "--timeout", "3600", "--http-timeout", "5")
        self.assertEqual(cli.client_for(explicit, {}).timeout, 5)

    def test_an_endpoint_nobody_listens_on_is_unavailable(self) -> None:
        # A port just released by its listener: nothing listens there now.
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        out = Captured(self)
        self.assertEqual(cli.main(["status", "--admin", f"http://127.0.0.1:{port}"]), cli.EXIT_UNAVAILABLE)
        self.assertIn(f"cannot reach the admin endpoint at http://127.0.0.1:{port}", out.stderr.getvalue())


class InvokeDocumentTests(SynchronousTestCase):
    def test_the_document_carries_the_command_arguments_and_options(self) -> None:
        parsed = options(
            "invoke", "echo", "hello", "world", "--timeout", "5", "--env", "A=1", "--working-dir", "/srv"
        )
        self.assertEqual(
            cli.invoke_document(parsed),
            {"command": "hello", "args": ["world"], "env": {"A": "1"}, "working_dir": "/srv", "timeout": 5.0},
        )

    def test_text_input_is_sent_as_text_and_other_bytes_as_base64(self) -> None:
        text_file, binary_file = self.mktemp(), self.mktemp()
        with open(text_file, "wb") as f:
            f.write("héllo\n".encode())
        with open(binary_file, "wb") as f:
            f.write(b"\xff\x00\x80")
        self.assertEqual(
            cli.invoke_document(options("invoke", "t", "c", "--input", text_file))["input"], "héllo\n"
        )
        self.assertEqual(
            cli.invoke_document(options("invoke", "t", "c", "--input", binary_file))["input_base64"], "/wCA"
        )

    def test_input_dash_reads_standard_input(self) -> None:
        class Stdin:
            buffer = io.BytesIO(b"from stdin")

        self.patch(sys, "stdin", Stdin)
        self.assertEqual(
            cli.invoke_document(options("invoke", "t", "c", "--input", "-"))["input"], "from stdin"
        )

    def test_an_unreadable_input_exits_66(self) -> None:
        out = Captured(self)
        self.assertEqual(cli.main(["invoke", "t", "c", "--input", self.mktemp()]), cli.EXIT_NOINPUT)
        self.assertIn("cannot read the input", out.stderr.getvalue())


class ExitStatusTests(SynchronousTestCase):
    def test_the_exit_status_is_the_execution_exit_code(self) -> None:
        self.assertEqual(cli.exit_status_for({"status": "Completed", "exit_code": 0}), 0)
        self.assertEqual(cli.exit_status_for({"status": "Failed", "exit_code": 3}), 3)
        self.assertEqual(cli.exit_status_for({"status": "Completed", "exit_code": 255}), 255)

    def test_without_a_usable_exit_code_the_status_decides(self) -> None:
        self.assertEqual(cli.exit_status_for({"status": "Completed", "exit_code": None}), 0)
        self.assertEqual(cli.exit_status_for({"status": "Failed", "exit_code": None}), 1)
        self.assertEqual(cli.exit_status_for({"status": "Cancelled"}), 1)
        self.assertEqual(cli.exit_status_for({"status": "Failed", "exit_code": 256}), 1)
        self.assertEqual(cli.exit_status_for({"status": "Failed", "exit_code": -9}), 1)

    def test_a_timed_out_execution_exits_75_whatever_its_exit_code(self) -> None:
        self.assertEqual(cli.exit_status_for({"status": "Timeout", "exit_code": 0}), cli.EXIT_TIMEOUT)

    def test_each_refusal_has_its_exit_status(self) -> None:
        def refused(status: int, name: str) -> int:
            body = {"error": {"code": 1, "name": name, "message": "m"}}
            return cli.refusal(status, body, json.dumps(body).encode()).exit_status

        self.assertEqual(refused(404, "UNKNOWN_TASK"), cli.EXIT_NOTASK)
        self.assertEqual(refused(404, "UNKNOWN_ROUTE"), cli.EXIT_PROTOCOL)
        self.assertEqual(refused(400, "INVALID_MESSAGE"), cli.EXIT_DATAERR)
        self.assertEqual(refused(413, "MESSAGE_TOO_LARGE"), cli.EXIT_DATAERR)
        self.assertEqual(refused(401, "NOT_AUTHENTICATED"), cli.EXIT_NOPERM)
        self.assertEqual(refused(503, "NO_INSTANCE_AVAILABLE"), cli.EXIT_UNAVAILABLE)
        self.assertEqual(refused(503, "SHUTTING_DOWN"), cli.EXIT_UNAVAILABLE)
        self.assertEqual(refused(504, "EXECUTION_TIMEOUT"), cli.EXIT_TIMEOUT)
        self.assertEqual(refused(502, "INSTANCE_LOST"), cli.EXIT_PROTOCOL)
        self.assertEqual(refused(500, "INTERNAL_ERROR"), cli.EXIT_SOFTWARE)

    def test_a_refusal_message_names_the_error_and_every_problem(self) -> None:
        body = {
            "error": {
                "code": 1004,
                "name": "INVALID_MESSAGE",
                "message": "args[0]: expected string, found integer",
                "problems": [{"path": "args[0]", "reason": "expected string, found integer"}],
            }
        }
        error = cli.refusal(400, body, b"")
        self.assertEqual(
            error.message,
            "args[0]: expected string, found integer (INVALID_MESSAGE, 1004)\n"
            "  args[0]: expected string, found integer",
        )

    def test_an_answer_that_is_not_the_error_json_is_reported_with_its_status(self) -> None:
        error = cli.refusal(502, None, b"<html>Bad Gateway</html>")
        self.assertEqual(
            (error.exit_status, error.message),
            (76, "the admin endpoint answered 502: <html>Bad Gateway</html>"),
        )
        self.assertEqual(cli.refusal(200, None, b"[]").exit_status, cli.EXIT_PROTOCOL)


class ExitStatusTableTests(SynchronousTestCase):
    def test_every_exit_status_is_in_the_table_shown_by_help(self) -> None:
        codes = {code for code, _ in cli.EXIT_STATUSES}
        constants = {
            str(value)
            for name, value in vars(cli).items()
            if name.startswith("EXIT_") and name != "EXIT_STATUSES"
        }
        self.assertEqual(constants - codes, set())
        out = Captured(self)
        self.assertEqual(cli.main(["--help"]), 0)
        self.assertIn("   67  no such task (HTTP 404, UNKNOWN_TASK)", out.stdout.getvalue())


class StatusTableTests(SynchronousTestCase):
    def test_the_status_is_three_readable_tables(self) -> None:
        text = cli.format_status(
            {
                "version": "0.1.0",
                "uptime": 3725.2,
                "tasks": [
                    {
                        "id": "echo",
                        "runtime_type": "process",
                        "min_instances": 1,
                        "max_instances": 4,
                        "outstanding": 0,
                        "instances": [
                            {
                                "instance_id": "process:echo-1",
                                "status": "Ready",
                                "reason": "its agent authenticated",
                                "pid": 4242,
                                "restarts": 1,
                                "last_exit": "exit status 3",
                                "uptime": 61,
                                "outstanding": 0,
                                "cpu_percent": 0.25,
                                "rss_bytes": 22 * 1024 * 1024,
                                "open_fds": 9,
                                "threads": 1,
                            }
                        ],
                    }
                ],
                "connections": [
                    {
                        "connection_id": "c1",
                        "instance_id": "process:echo-1",
                        "transport": "unix",
                        "authenticated": True,
                    }
                ],
            }
        )
        self.assertEqual(
            text,
            "spear_twisted 0.1.0, up 1h 2m\n"
            "\n"
            "TASK  RUNTIME  MIN  MAX  INSTANCES  OUTSTANDING\n"
            "echo  process  1    4    1          0\n"
            "\n"
            "TASK  INSTANCE        STATUS  PID   RESTARTS  OUTSTANDING  CPU%  RSS       FDS  THREADS"
            "  UPTIME\n"
            "echo  process:echo-1  Ready   4242  1         0            0.2   22.0 MiB  9    1      "
            "  1m 1s\n"
            "  process:echo-1: last exit: exit status 3\n"
            "\n"
            "CONNECTION ID  INSTANCE ID     TRANSPORT  AUTHENTICATED\n"
            "c1             process:echo-1  unix       yes\n",
        )

    def test_the_reason_is_noted_for_an_instance_that_does_not_serve(self) -> None:
        instance = {
            "instance_id": "process:echo-1",
            "status": "Error",
            "reason": "crash loop",
            "last_exit": None,
        }
        document = {"tasks": [{"id": "echo", "instances": [instance]}], "connections": []}
        self.assertIn("\n  process:echo-1: reason: crash loop\n", cli.format_status(document))

    def test_empty_parts_say_so(self) -> None:
        text = cli.format_status({"version": "0.1.0", "uptime": 0, "tasks": [], "connections": []})
        self.assertEqual(
            text, "spear_twisted 0.1.0, up 0s\n\n(no tasks)\n\n(no instances)\n\n(no connections)\n"
        )


class ConsoleScriptTests(SynchronousTestCase):
    def test_setup_cfg_installs_spear_as_the_cli_main(self) -> None:
        import configparser

        parser = configparser.ConfigParser()
        parser.read(os.path.join(ROOT, "setup.cfg"))
        scripts = [line.strip() for line in parser["options.entry_points"]["console_scripts"].splitlines()]
        self.assertIn("spear = spear_twisted.cli:main", scripts)


class StartupTests(SynchronousTestCase):
    def test_the_command_imports_no_twisted(self) -> None:
        """``spear`` starts fast: the standard library only."""
        script = (
            "import sys, spear_twisted.cli\n"
            "spear_twisted.cli.parser()\n"
            "heavy = ('twisted', 'attrs', 'cattrs', 'orjson')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONPATH": ROOT},
            capture_output=True,
            text=True,
            check=True,
        )
        self.assertEqual(result.stdout.strip(), "[]")
