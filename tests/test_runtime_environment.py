"""An instance's program is checked before anything is made; its environment is built from nothing."""

from __future__ import annotations

import os
import stat

from twisted.trial.unittest import SynchronousTestCase

from spear_twisted.runtime.environment import (
    InvalidInstanceConfig,
    build_environment,
    check_working_dir,
    protocol_environment,
    resolve_executable,
)
from spear_twisted.runtime.model import InstanceConfig
from spear_twisted.wire import RuntimeInstanceId, RuntimeType


class ExecutableTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)

    def file(self, name: str, mode: int) -> str:
        path = os.path.join(self.directory, name)
        with open(path, "w") as file:
            file.write("#!/bin/sh\n")
        os.chmod(path, mode)
        return path

    def assertRefused(self, executable: str, path: str | None, message: str) -> None:
        with self.assertRaises(InvalidInstanceConfig) as caught:
            resolve_executable(executable, path)
        self.assertEqual(str(caught.exception), message)

    def test_an_executable_path_is_made_absolute(self) -> None:
        program = self.file("prog", 0o755)
        self.assertEqual(resolve_executable(program, None), program)
        relative = os.path.relpath(program)
        self.assertEqual(resolve_executable(relative, None), program)

    def test_a_name_is_looked_up_on_the_given_path(self) -> None:
        program = self.file("prog", 0o755)
        self.assertEqual(resolve_executable("prog", self.directory), program)
        self.assertRefused("prog", "/nonexistent", "executable 'prog' not found on PATH '/nonexistent'")

    def test_what_is_wrong_is_said(self) -> None:
        missing = os.path.join(self.directory, "missing")
        self.assertRefused(missing, None, f"executable {missing} does not exist")
        self.assertRefused(self.directory + "/", None, f"executable {self.directory} is not a file")
        plain = self.file("plain", 0o644)
        self.assertRefused(plain, None, f"executable {plain} is not executable")
        self.assertRefused("", None, "executable is empty")
        self.assertRefused("a\0b", None, "executable contains a NUL character")

    def test_a_symlink_keeps_its_name(self) -> None:
        """A virtualenv's python is a symlink whose own path matters to it."""
        program = self.file("prog", stat.S_IRWXU)
        link = os.path.join(self.directory, "link")
        os.symlink(program, link)
        self.assertEqual(resolve_executable(link, None), link)

    def test_the_working_directory_must_exist(self) -> None:
        self.assertIsNone(check_working_dir(None))
        self.assertEqual(check_working_dir(self.directory), self.directory)
        self.assertRaises(InvalidInstanceConfig, check_working_dir, os.path.join(self.directory, "none"))


class EnvironmentTests(SynchronousTestCase):
    def test_whitelist_then_task_then_protocol(self) -> None:
        instance_id = RuntimeInstanceId(RuntimeType.PROCESS, "echo-1")
        config = InstanceConfig(
            "/bin/true",
            env={"PATH": "/task/bin", "MODE": "x", "SECRET": "no"},
            inherit_env=("PATH", "HOME", "TZ"),
        )
        parent = {
            "PATH": "/usr/bin",
            "HOME": "/root",
            "AWS_SECRET_ACCESS_KEY": "never",
            "SPEAR_SECRET": "never",
        }
        protocol = protocol_environment(
            instance_id, "the-secret", {"SPEAR_COMMUNICATION_TYPE": "unix", "SPEAR_SOCKET_PATH": "/s"}
        )
        self.assertEqual(
            build_environment(config, parent, protocol),
            {
                "PATH": "/task/bin",
                "HOME": "/root",
                "MODE": "x",
                "SPEAR_INSTANCE_ID": "process:echo-1",
                "SPEAR_SECRET": "the-secret",
                "SECRET": "the-secret",
                "SPEAR_COMMUNICATION_TYPE": "unix",
                "SPEAR_SOCKET_PATH": "/s",
            },
        )
