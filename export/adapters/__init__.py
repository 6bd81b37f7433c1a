"""Model families. Each module here exposes MODEL_TYPES and three functions:

- `embeddings(model) -> (callable(input_ids, token_type_ids) -> hidden, uses_token_type_ids)`
- `blocks(model) -> list[BlockParts]`
- `classifier(model) -> ClassifierParts` (the model's own sequence-classification head)

Adding a family is one new file in this folder; nothing else changes.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

from ...errors import ExportError


def _families() -> dict[str, ModuleType]:
    found: dict[str, ModuleType] = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for model_type in getattr(module, "MODEL_TYPES", ()):
            found[model_type] = module
    return found


def supported_model_types() -> list[str]:
    return sorted(_families())


def adapter_for(model_type: str) -> ModuleType:
    families = _families()
    if model_type not in families:
        raise ExportError(f"model_type {model_type!r} is not supported; supported: "
                          f"{', '.join(sorted(families))}")
    return families[model_type]
