"""
The twistd plugin and its options, in process: the plugin is found, imports
nothing heavy, and the options make the configuration (or refuse it with a
clear message).  Real ``twistd`` processes are in ``test_twistd``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from twisted.application.service import IServiceMaker, MultiService
from twisted.logger import Logger, LogLevel
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from spear_twisted import tap
from spear_twisted.config import default_config
from spear_twisted.service import SpearService
from tests.runtime_support import ROOT

GOOD = '[[tasks]]\nid = "t"\nexecutable = "/bin/true"\n'


def parse(*argv: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(argv))
    return options


class PluginTests(SynchronousTestCase):
    def test_the_spear_plugin_is_a_service_maker(self) -> None:
        [plugin] = [plugin for plugin in getPlugins(IServiceMaker) if plugin.tapname == "spear"]
        self.assertIs(plugin.options, tap.Options)
        self.assertIs(plugin.makeService, tap.makeService)

    def test_the_plugin_module_imports_neither_a_reactor_nor_the_spearlet(self) -> None:
        code = (
            "import json, sys\n"
            "import twisted.plugins.spear_plugin\n"
            "print(json.dumps([name for name in ('twisted.internet.reactor', 'spear_twisted.tap', "
            "'spear_twisted.service') if name in sys.modules]))\n"
        )
        output = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONPATH": ROOT},
            cwd=ROOT,
            capture_output=True,
            check=True,
            text=True,
        ).stdout
        self.assertEqual(json.loads(output), [])


class OptionsTests(SynchronousTestCase):
    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as file:
            file.write(text)
        return path

    def test_without_options_the_built_in_default_runs(self) -> None:
        self.assertEqual(parse().config, default_config())

    def test_a_configuration_file_is_read(self) -> None:
        options = parse("--config", self.write(GOOD))
        assert options.config is not None
        self.assertEqual([task.id for task in options.config.tasks], ["t"])

    def test_listeners_replace_the_files(self) -> None:
        path = self.write('[connections]\nendpoints = ["tcp:9100:interface=127.0.0.1"]\n' + GOOD)
        options = parse(
            "-c", path, "--listen", "unix:/tmp/a.sock", "--listen", "tcp:9200:interface=127.0.0.1"
        )
        assert options.config is not None
        self.assertEqual(
            options.config.connections.endpoints, ("unix:/tmp/a.sock", "tcp:9200:interface=127.0.0.1")
        )

    def test_the_admin_endpoint_and_the_log_level_override_the_files(self) -> None:
        path = self.write('log_level = "error"\n[admin]\nenabled = false\n' + GOOD)
        options = parse("-c", path, "--admin", "tcp:8001:interface=127.0.0.1", "--log-level", "debug")
        assert options.config is not None
        self.assertEqual(options.config.admin.endpoint, "tcp:8001:interface=127.0.0.1")
        self.assertTrue(options.config.admin.enabled)
        self.assertEqual(options.config.log_level, "debug")

    def test_a_bad_configuration_is_a_usage_error_naming_file_and_key(self) -> None:
        path = self.write(GOOD + 'max_instances = "2"\n')
        with self.assertRaises(usage.UsageError) as caught:
            parse("--config", path)
        self.assertEqual(
            str(caught.exception), f"{path}: tasks[0].max_instances: expected integer, found string"
        )

    def test_a_missing_file_is_a_usage_error(self) -> None:
        with self.assertRaises(usage.UsageError) as caught:
            parse("--config", "/no/such.toml")
        self.assertIn("/no/such.toml: (top level): cannot read the file", str(caught.exception))

    def test_a_missing_program_is_a_usage_error_naming_the_task(self) -> None:
        path = self.write('[[tasks]]\nid = "t"\nexecutable = "/no/such/program"\n')
        with self.assertRaises(usage.UsageError) as caught:
            parse("--config", path)
        self.assertEqual(
            str(caught.exception), f"{path}: tasks[0] (t): executable /no/such/program does not exist"
        )

    def test_an_unreadable_admin_token_file_is_a_usage_error_naming_it(self) -> None:
        path = self.write(GOOD + '[admin]\ntoken_file = "/no/such/token"\n')
        with self.assertRaises(usage.UsageError) as caught:
            parse("--config", path)
        self.assertEqual(
            str(caught.exception),
            f"{path}: admin.token_file: cannot read /no/such/token: No such file or directory",
        )

    def test_an_unreadable_bridge_token_file_is_a_usage_error_naming_the_caller(self) -> None:
        path = self.write(
            GOOD + '[bridge]\nlisten = ["tcp:0:interface=127.0.0.1"]\n'
            '[bridge.token_files]\nops = "/no/such/token"\n'
        )
        with self.assertRaises(usage.UsageError) as caught:
            parse("--config", path)
        self.assertEqual(
            str(caught.exception),
            f"{path}: bridge.token_files: the token of caller 'ops': "
            "cannot read /no/such/token: No such file or directory",
        )

    def test_bad_option_values_are_usage_errors_naming_the_option(self) -> None:
        for argv, expected in [
            (
                ["--listen", "9100"],
                "command line: --listen: endpoints: '9100' is not an endpoint description",
            ),
            (["--admin", "7732"], "command line: --admin: endpoint '7732' is not an endpoint description"),
            (["--log-level", "loud"], "command line: --log-level: log_level must be one of"),
        ]:
            with self.assertRaises(usage.UsageError) as caught:
                parse(*argv)
            self.assertTrue(str(caught.exception).startswith(expected), str(caught.exception))

    def test_an_unknown_option_is_a_usage_error(self) -> None:
        self.assertRaises(usage.UsageError, parse, "--no-such-option")


class ServiceTests(SynchronousTestCase):
    def test_outside_twistd_the_service_is_the_spearlet(self) -> None:
        service = tap.makeService(parse())
        self.assertIsInstance(service, SpearService)

    def test_under_twistd_the_spearlet_is_held_with_the_log_observer(self) -> None:
        from twisted.application.service import Application
        from twisted.logger import ILogObserver

        options = parse("--log-level", "warn")
        options.parent = {"logfile": self.mktemp(), "nodaemon": True}
        root = tap.makeService(options)
        self.assertIsInstance(root, MultiService)
        assert isinstance(root, tap.TwistdRoot)
        self.assertIsInstance(root.spear, SpearService)
        application = Application("spear")
        root.setServiceParent(application)
        self.assertIsNotNone(application.getComponent(ILogObserver))

    def test_the_log_observer_filters_spear_twisteds_events_by_the_level(self) -> None:
        path = self.mktemp()
        config = parse("--log-level", "warn").config
        assert config is not None
        observer = tap.log_observer(config, {"logfile": path, "nodaemon": True})
        for namespace, level, text in [
            ("spear_twisted.runtime.process", LogLevel.info, "hidden info"),
            ("spear_twisted.runtime.process", LogLevel.warn, "shown warning"),
            ("twisted.internet.base", LogLevel.info, "shown twisted info"),
            ("spear_twisted", LogLevel.debug, "hidden debug"),
        ]:
            Logger(namespace=namespace, observer=observer).emit(level, text)
        with open(path) as file:
            logged = file.read()
        self.assertIn("shown warning", logged)
        self.assertIn("shown twisted info", logged)
        self.assertNotIn("hidden", logged)
