"""What a plain `edgeinfer export` chooses when the user names nothing: the recipe measured best.

Measured on the SST-2 MiniLM (bench/RESULTS-archive.md): exits trained by fine-tuning the backbone with them
answer earlier than heads on a frozen backbone, a linear exit costs less per exit than a pooler
head and answered as early, and an int8 variant run as a cascade (fp32 on restart) costs least at
every agreement level. So a classifier gets all three unless the user says otherwise; embeddings
keep trained heads and no variant (their cascade has no confidence to restart on). Every choice
and its reason go into the manifest (`export.recipe`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .pipeline import ExportOptions

AUTO = "auto"


def resolve_recipe(options: "ExportOptions", has_labels: bool) -> tuple["ExportOptions", dict[str, str]]:
    """The options with every "auto" replaced, and why each value was taken."""
    classifier = options.task == "text-classification"
    chosen = {
        "train_exits": ("joint", "fine-tuned with the backbone: " + (
            "labels and the original model's outputs" if has_labels else "the original model's outputs "
            "(no labels in --calib: self-distillation)")) if classifier
        else ("heads", "trained on the frozen backbone (joint training is for classifiers)"),
        "exit_head": ("linear", "one matrix per exit: as early and cheaper than a pooler head") if classifier
        else ("pooler", "embedding exits are a linear map already"),
        "quant": ("int8", "an int8 variant whose cascade (fp32 on restart) load() runs when it is expected "
                          "to cost least") if classifier
        else ("int8", "a smoothed int8 variant that load() runs alone where calibration shows it holds the "
                      "agreement level outright (an embedding has no confidence to restart on)"),
    }
    why, values = {}, {}
    for field, (value, reason) in chosen.items():
        given = getattr(options, field)
        values[field] = value if given == AUTO else given
        why[field] = f"{values[field]}: {reason}" if given == AUTO else f"{given}: asked for"
    return replace(options, **values), why
