"""The distribution ships every package of the source tree."""

from __future__ import annotations

import configparser
import os

from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _listed_packages() -> set[str]:
    parser = configparser.ConfigParser()
    parser.read(os.path.join(ROOT, "setup.cfg"))
    return {line.strip() for line in parser["options"]["packages"].splitlines() if line.strip()}


def _source_packages() -> set[str]:
    found = set()
    for directory, subdirs, files in os.walk(os.path.join(ROOT, "spear_twisted")):
        subdirs[:] = [name for name in subdirs if not name.startswith(("_", "."))]
        if "__init__.py" in files:
            found.add(os.path.relpath(directory, ROOT).replace(os.sep, "."))
    return found


class PackagingTests(SynchronousTestCase):
    def test_setup_cfg_lists_every_package_of_the_source_tree(self) -> None:
        """``packages`` is explicit (for twisted.plugins): a new package must be added to it."""
        missing = _source_packages() - _listed_packages()
        self.assertEqual(missing, set(), f"add these to [options] packages in setup.cfg: {sorted(missing)}")

    def test_setup_cfg_lists_the_twisted_plugins_portion(self) -> None:
        self.assertIn("twisted.plugins", _listed_packages())

    def test_the_plugin_directories_have_no_init_module(self) -> None:
        """An ``__init__.py`` there would shadow Twisted's own packages."""
        for directory in ("twisted", os.path.join("twisted", "plugins")):
            self.assertFalse(os.path.exists(os.path.join(ROOT, directory, "__init__.py")), directory)
