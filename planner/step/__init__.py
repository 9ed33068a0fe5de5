"""The Trainer's training step, built and traced: the layer every other part stands on.

What a ``transformers.Trainer`` step of a config is (model class, peft LoRA, bitsandbytes 4-bit
base, the optimizer Trainer builds for an ``optim`` name, checkpointing, autocast), built once for
every use: traced under fake tensors by the estimator and the roofline, run for real by the
profiler, trained by the executor. Which device the step stands for (:class:`CudaTarget`) and
what counts as running out of memory live here too.
"""

from planner.step._autocast import CudaAutocastPolicy
from planner.step._imports import import_bitsandbytes, import_peft, patched
from planner.step._lora import add_lora, lora_target_candidates
from planner.step._loss import loss_in_logits_dtype, loss_shifting_upcast_logits
from planner.step._oom import is_out_of_memory
from planner.step._optimizers import (
    BITSANDBYTES_OPTIMIZERS,
    TRAINER_OPTIM_NAMES,
    make_optimizer,
    optimizer_implementation,
)
from planner.step._setup import (
    TrainingSetup,
    autocast_dtype,
    base_weight_dtype,
    build_model,
    build_training_setup,
    model_class,
    task_of,
)
from planner.step._stack import TRACED_BATCH, modelled_stack
from planner.step._target import CUDA_BLOCK_BYTES, CudaTarget, check_card_supports, cuda_target, sdpa_backend
from planner.step._trace import (
    WINDOWS,
    ZERO_ENGINE,
    AllocationStream,
    PeakSplit,
    StepTrace,
    StepTracer,
    layer_period,
    num_layers,
    trace_step,
    truncated_config,
)
from planner.step._tracker import LiveBytesTracker, LivePeak

__all__ = [
    "BITSANDBYTES_OPTIMIZERS",
    "CUDA_BLOCK_BYTES",
    "TRACED_BATCH",
    "TRAINER_OPTIM_NAMES",
    "WINDOWS",
    "ZERO_ENGINE",
    "AllocationStream",
    "CudaAutocastPolicy",
    "CudaTarget",
    "LiveBytesTracker",
    "LivePeak",
    "PeakSplit",
    "StepTrace",
    "StepTracer",
    "TrainingSetup",
    "add_lora",
    "autocast_dtype",
    "base_weight_dtype",
    "build_model",
    "build_training_setup",
    "check_card_supports",
    "cuda_target",
    "import_bitsandbytes",
    "import_peft",
    "is_out_of_memory",
    "layer_period",
    "lora_target_candidates",
    "loss_in_logits_dtype",
    "loss_shifting_upcast_logits",
    "make_optimizer",
    "model_class",
    "modelled_stack",
    "num_layers",
    "optimizer_implementation",
    "patched",
    "sdpa_backend",
    "task_of",
    "trace_step",
    "truncated_config",
]
