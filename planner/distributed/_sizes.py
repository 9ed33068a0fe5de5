"""The model's sizes as each strategy communicates them, counted on shallow fake builds."""

from __future__ import annotations

import functools

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from planner.distributed._comm import ModelSizes
from planner.distributed._ddp import gradient_buckets
from planner.distributed._fsdp import mixed_precision_policy
from planner.distributed._zero import ZeroModelStates, zero_model_states
from planner.errors import ConfigError
from planner.models import load_model_config
from planner.schema import Method, OptimizerName, Parallelism, Precision, TrainingConfig
from planner.step import build_model, num_layers, truncated_config

HALF_BYTES = 2
"""ZeRO communicates 16-bit weights and gradients (its fp16/bf16 engines)."""


@functools.cache
def _counts(config: TrainingConfig, depth: int) -> tuple[dict[str, int], int, int, int]:
    """(sizes, first unit elements, last DDP bucket elements, layers) of a ``depth``-layer build
    of the single-GPU ``config`` (fake tensors)."""
    hf_config = truncated_config(load_model_config(config.model), depth)
    model = build_model(hf_config, config, fake_mode=FakeTensorMode(allow_non_fake_inputs=True))
    parameters = list(model.parameters())
    trainable = [p for p in parameters if p.requires_grad]
    counts = {
        "largest_module_elements": max(
            sum(p.numel() for p in module.parameters(recurse=False)) for module in model.modules()
        ),
        "elements": sum(p.numel() for p in parameters),
        "weight_bytes": sum(p.numel() * p.element_size() for p in parameters),
        "trainable_elements": sum(p.numel() for p in trainable),
        "trainable_bytes": sum(p.numel() * p.element_size() for p in trainable),
    }
    embedding = model.get_input_embeddings()  # type: ignore[operator]
    first_unit = int(embedding.weight.numel()) if embedding is not None else 0
    buckets = gradient_buckets(parameters)
    last_bucket = buckets[-1][0] if buckets else 0
    return counts, first_unit, last_bucket, depth


def model_sizes(config: TrainingConfig) -> ModelSizes:
    """Whole-model bytes ``config``'s strategy gathers and reduces per step.

    Counted on 1- and 2-layer builds and extended linearly to the model's depth (layers are
    identical). Gather dtype: FSDP's ``param_dtype`` (the half dtype under mixed precision, else
    the weights' own), 16-bit for ZeRO; gradients: DDP reduces the trainable weights' dtype,
    FSDP its ``reduce_dtype``, ZeRO 16-bit.
    """
    depth = num_layers(load_model_config(config.model))
    single = config.with_changes(parallelism=Parallelism(), micro_batch=1, gradient_accumulation=1)
    (one, first_unit, last_bucket, _), (two, _, _, _) = _counts(single, 1), _counts(single, 2)

    def at_depth(key: str) -> int:
        return one[key] + (two[key] - one[key]) * (depth - 1)

    strategy = config.parallelism.strategy
    if strategy.is_zero:
        return ModelSizes(
            gathered_bytes=HALF_BYTES * at_depth("elements"),
            gradient_bytes=HALF_BYTES * at_depth("trainable_elements"),
            first_unit_bytes=HALF_BYTES * first_unit,
            last_bucket_bytes=HALF_BYTES * last_bucket,
        )
    policy = mixed_precision_policy(config.precision)
    if strategy.is_fsdp and policy.param_dtype is not None:
        size = torch.empty(0, dtype=policy.param_dtype).element_size()
        gathered, gradients, first = (
            size * at_depth("elements"),
            size * at_depth("trainable_elements"),
            size * first_unit,
        )
    else:
        average = at_depth("weight_bytes") / max(at_depth("elements"), 1)
        gathered, gradients, first = (
            at_depth("weight_bytes"),
            at_depth("trainable_bytes"),
            round(average * first_unit),
        )
    return ModelSizes(
        gathered_bytes=gathered,
        gradient_bytes=gradients,
        first_unit_bytes=first,
        last_bucket_bytes=last_bucket,
    )


def zero_states(config: TrainingConfig) -> ZeroModelStates:
    """DeepSpeed ZeRO's model states per rank of ``config``'s job (see :func:`zero_model_states`):
    parameters counted as :func:`model_sizes` counts them, the largest layer being the largest
    module's own parameters (as DeepSpeed's ``estimate_zero3_model_states_mem_needs_all_live``
    takes it). Those formulas are for full fine-tuning with mixed-precision AdamW; other setups are
    refused in one line."""
    if (
        config.method is not Method.FULL
        or config.precision not in (Precision.BF16, Precision.FP16)
        or config.optimizer is not OptimizerName.ADAMW
    ):
        raise ConfigError(
            "strategy",
            f"{config.parallelism.strategy.value} model states follow DeepSpeed's formulas for full "
            "fine-tuning with mixed-precision AdamW only",
            "use --method full --precision bf16 --optimizer adamw, or --strategy fsdp",
        )
    depth = num_layers(load_model_config(config.model))
    single = config.with_changes(parallelism=Parallelism(), micro_batch=1, gradient_accumulation=1)
    (one, _, _, _), (two, _, _, _) = _counts(single, 1), _counts(single, 2)
    parameters = one["elements"] + (two["elements"] - one["elements"]) * (depth - 1)
    return zero_model_states(parameters, one["largest_module_elements"], config.parallelism)
