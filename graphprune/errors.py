"""Errors a user can act on. The CLI prints their message on one line and exits non-zero;
anything else escaping is a bug in graphprune and keeps its traceback."""


class GraphpruneError(Exception):
    """Base class: the message names the file, node or option and what to do."""

    exit_code = 1


class UsageError(GraphpruneError):
    """A bad option value or combination."""

    exit_code = 2


class ModelLoadError(GraphpruneError):
    """The input file is missing, unreadable, not ONNX, or not a valid model."""

    exit_code = 3


class NothingToPruneError(GraphpruneError):
    """The model has no group that can be pruned safely; it is left as it is."""

    exit_code = 4


class UnsafeResultError(GraphpruneError):
    """The pruned model failed verification; nothing was written."""

    exit_code = 5


# Exit code of an unexpected failure inside graphprune (a bug, not a user mistake).
INTERNAL_ERROR_EXIT = 70
