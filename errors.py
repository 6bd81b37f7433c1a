"""The few error types edgeinfer raises on purpose.

Each carries a one-line message that names what is wrong and what to do; the CLI prints it and
exits non-zero. Anything else escaping the library is a bug.
"""


class EdgeInferError(Exception):
    """Base of every documented edgeinfer error."""


class PackageError(EdgeInferError):
    """An edge package is missing, malformed, tampered with, or of an unsupported version."""


class ExportError(EdgeInferError):
    """A model or its calibration data cannot be exported as asked."""


class InputError(EdgeInferError):
    """Input to a run (texts, options) is not usable."""


class BudgetError(EdgeInferError):
    """No operating point fits the latency or memory budget."""
