"""A training config written in axolotl's form: the inverse of :func:`read_axolotl`.

The keys are the reader's (axolotl's config reference), so reading the written file back gives the
same config: ``adapter`` and ``load_in_4bit`` for the method, ``lora_*``, ``bf16``/``fp16``/
``bfloat16`` for the precision, ``sequence_len``, ``micro_batch_size`` x
``gradient_accumulation_steps``, ``optimizer`` (Trainer's ``optim`` name), the attention switch,
and the schedule.
One config has no axolotl form: full fine-tuning in bf16 mixed precision with fp32 master
weights, since axolotl loads the model in bf16 when ``bf16`` is on; it is written as axolotl
would train it (pure bf16) and said in the returned notes. axolotl also needs ``datasets``, which
a training config does not hold: the notes say to add them.
"""

from __future__ import annotations

from typing import Any

from planner.schema import Attention, Hyperparameters, Method, Precision, TrainingConfig

# The reader's attention switches, inverted (axolotl's flash_attention / sdp_attention / eager_attention).
_ATTENTION_KEYS = {
    Attention.SDPA: "sdp_attention",
    Attention.EAGER: "eager_attention",
    Attention.FLASH_ATTENTION_2: "flash_attention",
}


def to_axolotl(
    config: TrainingConfig, hyper: Hyperparameters | None = None
) -> tuple[dict[str, Any], list[str]]:
    """``config`` (and the trial's hyperparameters) as axolotl YAML keys, and notes on what differs."""
    notes = ["add `datasets:` (axolotl's data section): a training config holds no data"]
    out: dict[str, Any] = {"base_model": config.model}
    if config.method is not Method.FULL:
        out["adapter"] = config.method.value
        if config.method is Method.QLORA:
            out["load_in_4bit"] = True
        lora = config.lora
        out.update(lora_r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout)
        if lora.target_modules == "all-linear":
            out["lora_target_linear"] = True
        else:
            out["lora_target_modules"] = list(lora.target_modules)
        if lora.autocast_adapter_dtype is not None:
            notes.append(
                f"lora.autocast_adapter_dtype {lora.autocast_adapter_dtype} has no axolotl key: "
                "axolotl keeps fp32 adapters, bf16 ones with bfloat16: true"
            )
    if config.precision is Precision.PURE_BF16:
        # ``bfloat16`` loads the model in bf16 whatever the method (the reader's pure-bf16).
        out.update(bf16=True, bfloat16=True)
    elif config.precision is Precision.BF16:
        out["bf16"] = True
        if config.method is Method.FULL:
            notes.append(
                "bf16 mixed precision with fp32 master weights has no axolotl form: bf16: true makes "
                "axolotl load the model in bf16 (pure bf16, less memory)"
            )
    elif config.precision is Precision.FP16:
        out["fp16"] = True
    from planner.step import TRAINER_OPTIM_NAMES  # torch-heavy: imported when a config is written

    out[_ATTENTION_KEYS[config.attention]] = True
    out.update(
        gradient_checkpointing=config.gradient_checkpointing,
        sequence_len=config.seq_len,
        micro_batch_size=config.micro_batch,
        gradient_accumulation_steps=config.gradient_accumulation,
        optimizer=TRAINER_OPTIM_NAMES[config.optimizer],
    )
    if hyper is not None:
        out.update(
            learning_rate=hyper.learning_rate,
            num_epochs=hyper.epochs,
            weight_decay=hyper.weight_decay,
            lr_scheduler=hyper.scheduler.value,
            warmup_ratio=hyper.warmup_ratio,
        )
        if hyper.max_steps is not None:
            out["max_steps"] = hyper.max_steps
    return out, notes
