"""Bring your own config: training configs from axolotl, LLaMA-Factory, TRL/TrainingArguments
and peft adapter files, and TrainingArguments names in the planner's own sweep spec; and a
config written back in axolotl's form."""

from planner.configs._axolotl_export import to_axolotl
from planner.configs._common import FORMATS, OPTIMIZER_NAMES, Format, ImportedConfig, ImportedTraining
from planner.configs._detect import detect_format
from planner.configs._read import read_training_config
from planner.configs._spec import normalise_spec

__all__ = [
    "FORMATS",
    "OPTIMIZER_NAMES",
    "Format",
    "ImportedConfig",
    "ImportedTraining",
    "detect_format",
    "normalise_spec",
    "read_training_config",
    "to_axolotl",
]
