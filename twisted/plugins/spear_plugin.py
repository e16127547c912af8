"""
The ``twistd spear`` plugin: only a pointer to ``spear_twisted.tap``, which
is imported when the plugin is used, so that ``twistd --help`` stays fast
and imports no reactor.
"""

from twisted.application.service import ServiceMaker

spear = ServiceMaker(
    "Spear spearlet",
    "spear_twisted.tap",
    "Run a Spear spearlet: supervised task instances and their execute requests.",
    "spear",
)
