"""The failures vaedeploy expects, one class per kind of cause; each message is one sentence for the user.

Every error raised for bad input, bad files or bad options derives from ``VaedeployError``: the CLI prints its
message on one line and exits 2 (1 for ``JobFailed``: the work ran and its check said no). Anything else that
escapes is a bug and keeps its traceback. The classes also derive from the builtin their callers caught before
(``ValueError``, ``RuntimeError``), so ``except ValueError`` keeps working.
"""
from __future__ import annotations


class VaedeployError(Exception):
    """An expected failure: the message names the file or option, what was expected and what came."""


class ConfigError(VaedeployError, ValueError):
    """An option or config value that cannot be used (a model or training config, a CLI flag)."""


class FileFormatError(VaedeployError, ValueError):
    """A file that exists but cannot be read as what it should be (JSON, safetensors, .npy)."""


class DataError(VaedeployError, ValueError):
    """A data set could not be loaded: the message names the source and what was expected."""


class RunError(VaedeployError, ValueError):
    """A run directory that cannot be used for what was asked (wrong kind, missing files, would be overwritten)."""


class BundleError(VaedeployError, ValueError):
    """A bundle cannot be used: the message names the bundle, the file and the field."""


class InputError(VaedeployError, ValueError):
    """An input the runtime cannot use: the message names the argument, what was expected and what came."""


class MissingDependency(VaedeployError, ImportError):
    """An optional package that this feature needs is not installed; the message says which extra to install."""


class JobFailed(VaedeployError, RuntimeError):
    """The work ran and failed its own check (validation against PyTorch, a diverged loss); exit code 1."""
