"""What generate() takes, checked before any work: each argument's type and range, so a wrong one is
one line naming it (runtime/arguments.py), never a TypeError from inside numpy or the tokenizer.

Ranges that depend on the package (positions, blocks, precisions) are checked by generate() itself.
"""

from __future__ import annotations

from typing import Any

from ...errors import InputError
from ..arguments import real, whole
from ..tokenize import check_texts
from .sampling import Sampling

_MANY = 1 << 31
_REQUIRED = ("max_new_tokens", "min_new_tokens", "draft_tokens", "draft_confidence", "draft_ngram")  # None: refused
_NUMBERS = {  # name: (low, high, low_open, whole)
    "max_new_tokens": (1, _MANY, False, True), "draft_tokens": (1, 4096, False, True),
    "draft_ngram": (0, 4096, False, True), "min_new_tokens": (0, _MANY, False, True),
    "draft_blocks": (0, 4096, False, True), "draft_confidence": (0.0, 1.0, False, False),
    "restart_below": (-1e9, 0.0, False, False), "exit_threshold": (0.0, 1e6, False, False),
    "agreement": (0.0, 1.0, True, False), "budget_ms": (0.0, 1e9, True, False),
    "first_token_ms": (0.0, 1e9, True, False), "tokens_per_second": (0.0, 1e9, True, False),
}


def check_request(prompt: Any, sampling: Any, stop: Any, on_text: Any, chat: Any, prune_prompt: Any,
                  prune_to_fit: Any, modes: tuple[str, ...], mode: Any, texts: dict[str, Any],
                  numbers: dict[str, Any]) -> None:
    """texts: the string-valued options (mode, precisions); numbers: the numeric ones (None: unset)."""
    if isinstance(prompt, list):
        if not prompt or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < _MANY for i in prompt):
            raise InputError("prompt as a list takes token ids (whole numbers >= 0), at least one")
    else:
        check_texts([prompt])
    if not isinstance(sampling, Sampling):
        raise InputError(f"sampling takes an edgeinfer Sampling(temperature=, top_k=, top_p=, seed=), "
                         f"not {type(sampling).__name__}")
    if not isinstance(stop, (tuple, list)) or not all(isinstance(s, str) and s for s in stop):
        raise InputError("stop takes a tuple of non-empty strings")
    if stop:
        check_texts(list(stop))
    if on_text is not None and not callable(on_text):
        raise InputError(f"on_text takes a function of one str, not {type(on_text).__name__}")
    for name, flag in (("chat", chat), ("prune_to_fit", prune_to_fit)):
        if not isinstance(flag, bool):
            raise InputError(f"{name} takes True or False, not {type(flag).__name__}")
    if not isinstance(mode, str) or mode not in modes:
        raise InputError(f"mode {mode!r} is not one of {', '.join(modes)}")
    for name, value in texts.items():
        if not isinstance(value, str):
            raise InputError(f"{name} takes a precision name such as 'fp32', not {type(value).__name__}")
    for name, value in numbers.items():
        if value is not None or name in _REQUIRED:
            low, high, low_open, integral = _NUMBERS[name]
            if integral:
                whole(name, value, low, high)
            else:
                real(name, value, low, high, low_open=low_open)
    _check_pruning(prune_prompt)


def _check_pruning(prune_prompt: Any) -> None:
    shape = "prune_prompt takes ((after_block, fraction), ...)"
    if not isinstance(prune_prompt, (tuple, list)):
        raise InputError(f"{shape}, not {type(prune_prompt).__name__}")
    for entry in prune_prompt:
        if not isinstance(entry, (tuple, list)) or len(entry) != 2:
            raise InputError(f"{shape}; {entry!r} is not such a pair")
        whole("prune_prompt block", entry[0], 1, 4096)
        real("prune_prompt fraction", entry[1], 0.0, 1.0, low_open=True)

