"""
The admin HTTP endpoint: health, metrics, status, and task execution as
HTTP and JSON, for operators and the ``spear`` command (:doc:`admin`).
"""

from spear_twisted.admin.bearer import BearerToken
from spear_twisted.admin.body import MAX_TIMEOUT, ExecuteBody, parse_execute_body, response_document
from spear_twisted.admin.health import Health, assess
from spear_twisted.admin.problems import HTTP_STATUS, error_document, http_status_for
from spear_twisted.admin.resource import METRICS_CONTENT_TYPE, Administered, AdminResource, TaskExecutor
from spear_twisted.admin.service import DEFAULT_ENDPOINT, AdminService, address_url
from spear_twisted.admin.site import IDLE_TIMEOUT, MAX_BODY_BYTES, AdminRequest, AdminSite

__all__ = [
    "DEFAULT_ENDPOINT",
    "HTTP_STATUS",
    "IDLE_TIMEOUT",
    "MAX_BODY_BYTES",
    "MAX_TIMEOUT",
    "METRICS_CONTENT_TYPE",
    "AdminRequest",
    "AdminResource",
    "AdminService",
    "AdminSite",
    "Administered",
    "BearerToken",
    "ExecuteBody",
    "Health",
    "TaskExecutor",
    "address_url",
    "assess",
    "error_document",
    "http_status_for",
    "parse_execute_body",
    "response_document",
]
