"""
``spear``: the command line of a running spearlet, through its admin endpoint.

::

    spear invoke TASK COMMAND [ARGS...] [--input FILE|-] [--timeout S]
    spear status [--json]
    spear health

The endpoint is ``--admin URL``, else ``$SPEAR_ADMIN_URL``, else
``http://127.0.0.1:7732``; the bearer token is ``--token-file FILE``, else
``--token TOKEN``, else ``$SPEAR_ADMIN_TOKEN``.

This module imports only the standard library (no Twisted, no attrs): the
command starts in a few tens of milliseconds.

Exit statuses: :data:`EXIT_STATUSES` (also shown by ``spear --help``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import textwrap
import urllib.error
import urllib.parse
import urllib.request

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

#: The admin endpoint when neither ``--admin`` nor ``$SPEAR_ADMIN_URL`` says otherwise.
DEFAULT_ADMIN_URL = "http://127.0.0.1:7732"
#: Seconds to wait for the spearlet's answer unless ``--http-timeout`` says otherwise.
DEFAULT_HTTP_TIMEOUT = 600.0
#: Extra seconds the client waits beyond an invocation's ``--timeout``.
TIMEOUT_MARGIN = 30.0

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_DATAERR = 65
EXIT_NOINPUT = 66
EXIT_NOTASK = 67
EXIT_UNAVAILABLE = 69
EXIT_SOFTWARE = 70
EXIT_TIMEOUT = 75
EXIT_PROTOCOL = 76
EXIT_NOPERM = 77

#: What each exit status means (sysexits-style where one fits), for ``--help`` and the docs.
EXIT_STATUSES = (
    ("0", "the execution completed with exit code 0 (health: the spearlet serves)"),
    ("N", "the execution's own exit code N, 1 to 255"),
    ("1", "the execution failed or was cancelled without an exit code, or its exit code is outside 0..255"),
    ("2", "usage: bad options or arguments, a bad admin URL, an unreadable token file"),
    ("65", "the spearlet refused the request as invalid (HTTP 400, 413)"),
    ("66", "the --input file cannot be read"),
    ("67", "no such task (HTTP 404, UNKNOWN_TASK)"),
    (
        "69",
        "unavailable: the admin endpoint cannot be reached, no instance can take the request, or the "
        "spearlet is stopping (HTTP 503); health: the spearlet does not serve",
    ),
    ("70", "the spearlet failed internally (HTTP 500)"),
    ("75", "timed out: the execution (HTTP 504) or the wait for the answer (--http-timeout)"),
    (
        "76",
        "protocol: the instance was lost or broke the protocol (HTTP 502), or the admin endpoint's answer "
        "is not understood",
    ),
    ("77", "the bearer token is missing or wrong (HTTP 401)"),
)

#: The exit status for an HTTP error status of the admin endpoint.
HTTP_EXIT = {
    400: EXIT_DATAERR,
    401: EXIT_NOPERM,
    404: EXIT_PROTOCOL,  # UNKNOWN_TASK is EXIT_NOTASK; any other 404 means a wrong URL
    405: EXIT_PROTOCOL,
    413: EXIT_DATAERR,
    500: EXIT_SOFTWARE,
    502: EXIT_PROTOCOL,
    503: EXIT_UNAVAILABLE,
    504: EXIT_TIMEOUT,
}

#: The exit status for an execution that ended without an exit code.
STATUS_EXIT = {"Completed": EXIT_OK, "Timeout": EXIT_TIMEOUT}


class CommandError(Exception):
    """
    A failure that ends the command with ``exit_status`` after printing
    ``message``; ``document`` is the admin endpoint's JSON answer, if any.
    """

    def __init__(self, message: str, exit_status: int, document: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.exit_status = exit_status
        self.document = document


# -- talking to the admin endpoint --------------------------------------------------------------


class AdminClient:
    """Requests to one admin endpoint, with an optional bearer token."""

    def __init__(self, url: str, token: str | None = None, timeout: float = DEFAULT_HTTP_TIMEOUT) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise CommandError(
                f"the admin URL must be http://HOST:PORT or https://HOST:PORT, not {url!r}", EXIT_USAGE
            )
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def request(self, method: str, path: str, document: Any = None) -> tuple[int, str, bytes]:
        """``(HTTP status, content type, body)`` of ``method path`` with JSON ``document``."""
        data = None if document is None else json.dumps(document).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token is not None:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, response.headers.get("Content-Type", ""), response.read()
        except urllib.error.HTTPError as e:
            with e:
                return e.code, e.headers.get("Content-Type", ""), e.read()
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):
                raise self._timed_out() from None
            raise CommandError(
                f"cannot reach the admin endpoint at {self.url}: {_reason(e.reason)}", EXIT_UNAVAILABLE
            ) from None
        except TimeoutError:
            raise self._timed_out() from None
        except (http.client.HTTPException, ConnectionError) as e:
            raise CommandError(
                f"the admin endpoint at {self.url} broke off the exchange: {_reason(e)}", EXIT_PROTOCOL
            ) from None

    def json(self, method: str, path: str, document: Any = None) -> tuple[int, Any]:
        """``(HTTP status, parsed JSON body)``; an error status raises :class:`CommandError`."""
        status, _content_type, body = self.request(method, path, document)
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if status >= 400 or not isinstance(parsed, dict):
            raise refusal(status, parsed, body)
        return status, parsed

    def _timed_out(self) -> CommandError:
        return CommandError(
            f"no answer from the admin endpoint at {self.url} within {self.timeout:g} s", EXIT_TIMEOUT
        )


def refusal(status: int, parsed: Any, body: bytes) -> CommandError:
    """The error for an answer with HTTP ``status`` and JSON body ``parsed`` (raw: ``body``)."""
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(error, dict):
        if status < 400:
            return CommandError(f"the admin endpoint answered {status} with no JSON object", EXIT_PROTOCOL)
        text = body[:200].decode("utf-8", "replace").strip()
        return CommandError(
            f"the admin endpoint answered {status}: {text}", HTTP_EXIT.get(status, EXIT_FAILED)
        )
    name = error.get("name", "UNKNOWN")
    exit_status = EXIT_NOTASK if name == "UNKNOWN_TASK" else HTTP_EXIT.get(status, EXIT_FAILED)
    message = f"{error.get('message', '')} ({name}, {error.get('code')})"
    for problem in error.get("problems", ()):
        if isinstance(problem, dict):
            message += f"\n  {problem.get('path') or '(body)'}: {problem.get('reason')}"
    return CommandError(message, exit_status, parsed)


def _reason(reason: object) -> str:
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


# -- invoke ----------------------------------------------------------------------------------------


def read_input(name: str) -> bytes:
    """The bytes of ``--input``: a file's, or standard input's for ``-``."""
    try:
        if name == "-":
            return sys.stdin.buffer.read()
        with open(name, "rb") as f:
            return f.read()
    except OSError as e:
        raise CommandError(f"cannot read the input {name!r}: {_reason(e)}", EXIT_NOINPUT) from None


def invoke_document(options: argparse.Namespace) -> dict[str, Any]:
    """The JSON body of ``POST /tasks/{id}/execute`` for ``spear invoke``'s options."""
    document: dict[str, Any] = {"command": options.command, "args": list(options.args)}
    if options.input is not None:
        data = read_input(options.input)
        try:
            document["input"] = data.decode("utf-8")
        except UnicodeDecodeError:
            import base64

            document["input_base64"] = base64.b64encode(data).decode("ascii")
    if options.env:
        document["env"] = dict(options.env)
    if options.working_dir is not None:
        document["working_dir"] = options.working_dir
    if options.timeout is not None:
        document["timeout"] = options.timeout
    return document


def exit_status_for(response: dict[str, Any]) -> int:
    """The command's exit status for an ``ExecuteResponse`` (see the table above)."""
    status = response.get("status")
    if status == "Timeout":
        return EXIT_TIMEOUT
    exit_code = response.get("exit_code")
    if isinstance(exit_code, int) and not isinstance(exit_code, bool):
        return exit_code if 0 <= exit_code <= 255 else EXIT_FAILED
    return STATUS_EXIT.get(str(status), EXIT_FAILED)


def invoke(client: AdminClient, options: argparse.Namespace) -> int:
    """``spear invoke``: run one request, print its output, return its exit status."""
    path = "/tasks/" + urllib.parse.quote(options.task, safe="") + "/execute"
    try:
        _, response = client.json("POST", path, invoke_document(options))
    except CommandError as e:
        if isinstance(e.document, dict):
            if options.json:
                _write(sys.stdout, json.dumps(e.document) + "\n")
            else:
                # A timed-out execution's response has the output it produced.
                partial = e.document.get("error", {}).get("response")
                if isinstance(partial, dict):
                    _print_response(partial)
        raise
    if options.json:
        _write(sys.stdout, json.dumps(response) + "\n")
    else:
        _print_response(response)
    return exit_status_for(response)


def _print_response(response: dict[str, Any]) -> None:
    _write(sys.stdout, _line(response.get("output")))
    _write(sys.stderr, _line(response.get("error")))


def _line(text: object) -> str:
    if not isinstance(text, str) or not text:
        return ""
    return text if text.endswith("\n") else text + "\n"


# -- status and health -----------------------------------------------------------------------------


def status(client: AdminClient, options: argparse.Namespace) -> int:
    """``spear status``: the tasks, instances and connections as tables."""
    _, document = client.json("GET", "/status")
    if options.json:
        _write(sys.stdout, json.dumps(document, indent=2) + "\n")
    else:
        _write(sys.stdout, format_status(document))
    return EXIT_OK


def health(client: AdminClient, options: argparse.Namespace) -> int:
    """``spear health``: 0 when the spearlet serves, 69 when it does not."""
    status_code, _content_type, body = client.request("GET", "/healthz")
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if status_code not in (200, 503) or not isinstance(document, dict) or "status" not in document:
        raise refusal(status_code, document, body)
    _write(sys.stdout, f"{document['status']}: {document.get('reason', '')}\n")
    return EXIT_OK if status_code == 200 else EXIT_UNAVAILABLE


def format_status(document: dict[str, Any]) -> str:
    """``GET /status``'s document as readable text: a header line and three tables."""
    lines = [f"spear_twisted {document.get('version', '?')}, up {_duration(document.get('uptime'))}", ""]
    tasks = document.get("tasks") or []
    lines += _table(
        ["TASK", "RUNTIME", "MIN", "MAX", "INSTANCES", "OUTSTANDING"],
        [
            [
                task.get("id"),
                task.get("runtime_type"),
                task.get("min_instances"),
                task.get("max_instances"),
                len(task.get("instances") or []),
                task.get("outstanding"),
            ]
            for task in tasks
        ],
        empty="no tasks",
    )
    lines.append("")
    rows = []
    reasons = []
    for task in tasks:
        for instance in task.get("instances") or []:
            rows.append(
                [
                    task.get("id"),
                    instance.get("instance_id"),
                    instance.get("status"),
                    instance.get("pid"),
                    instance.get("restarts"),
                    instance.get("outstanding"),
                    _percent(instance.get("cpu_percent")),
                    _bytes(instance.get("rss_bytes")),
                    instance.get("open_fds"),
                    instance.get("threads"),
                    _duration(instance.get("uptime")),
                ]
            )
            notes = [f"last exit: {instance['last_exit']}"] if instance.get("last_exit") else []
            if instance.get("reason") and instance.get("status") not in SERVING_STATUSES:
                notes.insert(0, f"reason: {instance['reason']}")
            if notes:
                reasons.append(f"  {instance.get('instance_id')}: {'; '.join(str(note) for note in notes)}")
    lines += _table(
        [
            "TASK",
            "INSTANCE",
            "STATUS",
            "PID",
            "RESTARTS",
            "OUTSTANDING",
            "CPU%",
            "RSS",
            "FDS",
            "THREADS",
            "UPTIME",
        ],
        rows,
        empty="no instances",
    )
    lines += reasons
    lines.append("")
    connections = document.get("connections") or []
    columns = _connection_columns(connections)
    lines += _table(
        [column.upper().replace("_", " ") for column in columns],
        [[connection.get(column) for column in columns] for connection in connections],
        empty="no connections",
    )
    return "\n".join(lines) + "\n"


#: Statuses of an instance that serves: its reason (how it got there) is not news.
SERVING_STATUSES = ("Ready", "Running", "Busy")

#: The connection fields shown, in this order, when the status has them.
CONNECTION_COLUMNS = (
    "connection_id",
    "instance_id",
    "transport",
    "remote_addr",
    "authenticated",
    "status",
    "session_state",
)


def _connection_columns(connections: list[dict[str, Any]]) -> list[str]:
    present = {key for connection in connections for key in connection}
    columns = [column for column in CONNECTION_COLUMNS if column in present]
    return columns or ["connection_id", "instance_id"]


def _table(header: list[str], rows: list[list[Any]], *, empty: str) -> list[str]:
    if not rows:
        return [f"({empty})"]
    cells = [header] + [[_cell(value) for value in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    ]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ",".join(f"{key}={item}" for key, item in value.items())
    return str(value)


def _bytes(value: Any) -> str | None:
    if not isinstance(value, (int, float)):
        return None
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return None  # unreachable: GiB ends the loop


def _percent(value: Any) -> str | None:
    return f"{value:.1f}" if isinstance(value, (int, float)) else None


def _duration(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    seconds = int(value)
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (seconds, "s")]
    shown = [f"{amount}{unit}" for amount, unit in parts if amount]
    return " ".join(shown[:2]) or "0s"


def _write(stream: Any, text: str) -> None:
    if text:
        stream.write(text)
        stream.flush()


# -- the command line -----------------------------------------------------------------------------


def _env_pair(text: str) -> tuple[str, str]:
    name, separator, value = text.partition("=")
    if not separator or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, not {text!r}")
    return name, value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, not {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, not {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``spear``."""
    connection = argparse.ArgumentParser(add_help=False)
    group = connection.add_argument_group("admin endpoint")
    group.add_argument(
        "--admin",
        metavar="URL",
        default=argparse.SUPPRESS,
        help=f"the admin endpoint (default: $SPEAR_ADMIN_URL, else {DEFAULT_ADMIN_URL})",
    )
    group.add_argument(
        "--token",
        default=argparse.SUPPRESS,
        help="the bearer token (default: $SPEAR_ADMIN_TOKEN); --token-file keeps it out of ps",
    )
    group.add_argument(
        "--token-file", metavar="FILE", default=argparse.SUPPRESS, help="read the bearer token from FILE"
    )
    group.add_argument(
        "--http-timeout",
        metavar="S",
        type=_seconds,
        default=argparse.SUPPRESS,
        help=(
            f"seconds to wait for the answer (default {DEFAULT_HTTP_TIMEOUT:g}, "
            f"or --timeout + {TIMEOUT_MARGIN:g})"
        ),
    )

    main_parser = argparse.ArgumentParser(
        prog="spear",
        description="Talk to a running spearlet through its admin endpoint.",
        parents=[connection],
        epilog="exit statuses:\n"
        + "\n".join(
            textwrap.fill(
                meaning,
                79,
                initial_indent=f"  {code:>3}  ",
                subsequent_indent=" " * 7,
                break_on_hyphens=False,
            )
            for code, meaning in EXIT_STATUSES
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = main_parser.add_subparsers(dest="what", metavar="COMMAND", required=True)

    run = commands.add_parser(
        "invoke",
        parents=[connection],
        help="run COMMAND with ARGS on an instance of TASK and print its output",
        description=(
            "Send an ExecuteRequest to an instance of TASK, print the output (stdout) and the "
            "error text (stderr), and exit with the execution's exit code.  Put -- before "
            "arguments that begin with a dash."
        ),
    )
    run.add_argument("task", metavar="TASK")
    run.add_argument("command", metavar="COMMAND")
    run.add_argument("args", metavar="ARGS", nargs="*")
    run.add_argument(
        "--input", metavar="FILE", help="send the bytes of FILE as input; - reads standard input"
    )
    run.add_argument("--timeout", metavar="S", type=_seconds, help="seconds the execution may take")
    run.add_argument(
        "--env",
        metavar="NAME=VALUE",
        type=_env_pair,
        action="append",
        help="an environment variable (repeatable)",
    )
    run.add_argument("--working-dir", metavar="DIR", help="the execution's working directory")
    run.add_argument(
        "--json", action="store_true", help="print the JSON answer: the ExecuteResponse, or the error"
    )
    run.set_defaults(run=invoke)

    show = commands.add_parser("status", parents=[connection], help="show tasks, instances and connections")
    show.add_argument("--json", action="store_true", help="print the status document as JSON")
    show.set_defaults(run=status)

    check = commands.add_parser(
        "health", parents=[connection], help="exit 0 when the spearlet serves, 69 when it does not"
    )
    check.set_defaults(run=health)
    return main_parser


def client_for(options: argparse.Namespace, environ: dict[str, str] | None = None) -> AdminClient:
    """The client that ``options`` (and the environment ``environ``) ask for."""
    env = os.environ if environ is None else environ
    url = getattr(options, "admin", None) or env.get("SPEAR_ADMIN_URL") or DEFAULT_ADMIN_URL
    token = None
    token_file = getattr(options, "token_file", None)
    if token_file is not None:
        try:
            with open(token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise CommandError(
                f"cannot read the token file {token_file!r}: {_reason(e)}", EXIT_USAGE
            ) from None
    else:
        token = getattr(options, "token", None) or env.get("SPEAR_ADMIN_TOKEN") or None
    timeout = getattr(options, "http_timeout", None)
    if timeout is None:
        invocation_timeout = getattr(options, "timeout", None)
        timeout = DEFAULT_HTTP_TIMEOUT
        if invocation_timeout is not None:
            timeout = max(timeout, invocation_timeout + TIMEOUT_MARGIN)
    return AdminClient(url, token, timeout)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``spear`` with ``argv`` (default: ``sys.argv[1:]``); its exit status."""
    try:
        options = parser().parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    try:
        result: int = options.run(client_for(options), options)
        return result
    except CommandError as e:
        _write(sys.stderr, f"spear: {e.message}\n")
        return e.exit_status
    except BrokenPipeError:
        # The reader went away (spear ... | head): not our failure.  Point
        # stdout at /dev/null so the interpreter's final flush stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
