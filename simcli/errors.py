"""The one exception family of simcli. Imports nothing from simcli.

Every message is one line meant for the user: it names the file, line, flag or value at fault
and, where there is a short list, the valid choices.
"""

from __future__ import annotations


class SimcliError(Exception):
    """Base of every error simcli reports to the user (exit code 1 unless a subclass says otherwise)."""

    exit_code = 1


class UsageError(SimcliError):
    """A flag or argument value that cannot work (exit code 2, like a Typer usage error)."""

    exit_code = 2


class BadInput(SimcliError):
    """Input text that cannot be read: bad encoding, missing column or field, malformed row."""


class ModelError(SimcliError):
    """A model that cannot be loaded or does not support what was asked of it."""


class ManifestMismatch(SimcliError):
    """Artefacts that do not fit together (model, pooling, dimension, whitening)."""


class CorruptArtifact(SimcliError):
    """A file simcli wrote earlier that is missing, truncated or altered."""


class OutputExists(SimcliError):
    """An output that already holds data and would be overwritten."""


class MissingDependency(SimcliError):
    """An optional package (an extra) that a feature needs is not installed."""


class InputWarning(UserWarning):
    """Input that reads, but maybe not as meant (a header row that looks like data); the CLI prints it as
    one `simcli: warning:` line."""
