"""The registry of pruning methods: adding a method is one module with ``@PRUNERS.register``."""

from edgeprune.registry import Registry

PRUNERS: Registry = Registry("pruning method")
