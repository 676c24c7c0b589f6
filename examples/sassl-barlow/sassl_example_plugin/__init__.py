"""sassl-example-plugin: a third-party sassl plugin, registered through the ``sassl``
entry-point group like any other.

It adds the SSL method ``barlow_twins`` and the task ``ordinal``.
"""

import sassl_core
from sassl_core.hookspecs import Register, SSLFactory, TaskFactory
from sassl_core.interfaces import TargetKind
from sassl_example_plugin.barlow_twins import BarlowTwinsOptions, build_barlow_twins
from sassl_example_plugin.ordinal import OrdinalOptions, build_ordinal


@sassl_core.hookimpl
def sassl_register_ssl_methods(register: Register[SSLFactory]) -> None:
    register("barlow_twins", build_barlow_twins, BarlowTwinsOptions)


@sassl_core.hookimpl
def sassl_register_tasks(register: Register[TaskFactory]) -> None:
    register("ordinal", build_ordinal, OrdinalOptions, target_kind=TargetKind.LABEL)
