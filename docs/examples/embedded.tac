"""
A Twisted application that embeds a spearlet: ``twistd -ny embedded.tac``.

The spearlet is one service of the application, beside the application's
own: here a greeter that, once running, asks the spearlet's ``echo`` task
to work and logs the answer.  ``SPEAR_CONFIG`` names a configuration file;
without it the built-in default runs.
"""

import os

from twisted.application import service
from twisted.logger import Logger

from spear_twisted.config import default_config, load_config
from spear_twisted.service import SpearService
from spear_twisted.wire import ExecuteRequest


class Greeter(service.Service):
    """The application's own service, a client of the spearlet."""

    log = Logger()

    def __init__(self, spear):
        self.spear = spear

    def startService(self):
        super().startService()
        request = ExecuteRequest("echo", "hello", ["from", "the", "application"])
        self.spear.tasks.execute("echo", request).addCallbacks(self.answered, self.failed)

    def answered(self, response):
        self.log.info("The spearlet answered: {output}", output=response.output)

    def failed(self, failure):
        self.log.failure("The spearlet could not answer", failure)


config_path = os.environ.get("SPEAR_CONFIG")
config = load_config(config_path) if config_path else default_config()

application = service.Application("embedding-example")
spear = SpearService(config)
spear.setServiceParent(application)
Greeter(spear).setServiceParent(application)
