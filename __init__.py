"""edgeinfer: edge packages and adaptive inference for transformers on small devices.

The runtime API imports numpy, onnxruntime and tokenizers only; `export_model` needs the
`edgeinfer[export]` extra and is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from .errors import BudgetError, EdgeInferError, ExportError, InputError, PackageError  # noqa: E402
from .runtime.policy import Budget, Policy  # noqa: E402
from .runtime.result import Result, Trace  # noqa: E402
from .runtime.load import load  # noqa: E402
from .runtime.encoder.session import EdgeSession  # noqa: E402
from .runtime.sessions import use_global_thread_pool  # noqa: E402
from .runtime.encoder.search import Hits, SearchIndex, open_index, search_index  # noqa: E402

if TYPE_CHECKING:
    from .export.pipeline import ExportOptions, export_model  # noqa: F401

__all__ = ["load", "search_index", "open_index", "SearchIndex", "Hits", "use_global_thread_pool", "Budget", "Policy", "EdgeSession", "Result", "Trace", "BudgetError", "EdgeInferError", "ExportError", "InputError", "PackageError",
           "ExportOptions", "export_model", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("export_model", "ExportOptions"):
        from .export import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'edgeinfer' has no attribute {name!r}")
