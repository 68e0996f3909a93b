"""Exceptions of the `hpo` package: all user mistakes, so the CLI prints one line and exits 2."""

from __future__ import annotations

from model.errors import UsageError


class SpecError(UsageError):
    """A study spec or a sampler/pruner name or option is wrong."""


class StorageError(UsageError):
    """The storage URL is malformed or its server cannot be reached."""


class StudyError(UsageError):
    """A study does not exist, or has no trial to report or export."""


class DashboardError(UsageError):
    """The dashboard cannot listen where asked (port in use, unknown host)."""
