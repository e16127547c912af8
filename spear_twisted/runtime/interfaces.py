"""The contract every runtime provides."""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IRuntime(Interface):
    """Creates, starts, stops and observes instances of one runtime type."""

    runtime_type = Attribute("The RuntimeType of the instances this runtime runs.")

    def create_instance(task_id, instance_config, resource_limits):  # type: ignore[no-untyped-def]
        """A new ``TaskInstance`` of ``task_id``, checked and not started."""

    def start_instance(instance):  # type: ignore[no-untyped-def]
        """Start ``instance``; a Deferred firing with it once it is Ready."""

    def stop_instance(instance):  # type: ignore[no-untyped-def]
        """Stop ``instance``; a Deferred firing once it is gone."""

    def health_check(instance):  # type: ignore[no-untyped-def]
        """An ``InstanceHealth``: can ``instance`` take work, and if not, why."""

    def get_metrics(instance):  # type: ignore[no-untyped-def]
        """``InstanceMetrics`` of ``instance``'s resource use."""
