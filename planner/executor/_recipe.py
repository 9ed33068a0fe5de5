"""The built-in causal-LM fine-tuning recipe: a local dataset, the trial's model, TrainingArguments.

Everything a trial's ``transformers.Trainer`` needs, built from the spec and the planned trial, so
that what runs is what the planner estimated: the same model builder as the estimator for
``init: random``, the same rows, labels and tokenizer as the planner's counting
(:func:`planner.data.read_sequences`: truncated at ``seq_len`` or packed, dynamic padding to the
longest row in a micro-batch).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from planner.data import TokenRow
from planner.errors import ConfigError
from planner.schema import PlannedTrial, Precision, SweepSpec, TrainingConfig

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedTokenizerBase


class TokenDataset(torch.utils.data.Dataset[dict[str, list[int]]]):
    """Tokenized rows (``input_ids`` and ``labels``); the collator pads each micro-batch."""

    def __init__(self, rows: Sequence[TokenRow]) -> None:
        self.rows = list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        row = self.rows[index]
        return {"input_ids": row.input_ids, "labels": row.labels}


def load_datasets(
    spec: SweepSpec, tokenizer: PreTrainedTokenizerBase, seq_len: int
) -> tuple[TokenDataset, TokenDataset | None]:
    """The training rows (``data.fraction`` of them, cut or packed as the planner counts them) and
    the eval rows (cut, never packed)."""
    from planner.data import fit_to_length, read_sequences

    train = TokenDataset(fit_to_length(read_sequences(spec, tokenizer, "train"), seq_len, spec.data.packing))
    evaluation = None
    if spec.data.eval is not None:
        evaluation = TokenDataset(fit_to_length(read_sequences(spec, tokenizer, "eval"), seq_len, False))
    return train, evaluation


def collator(tokenizer: PreTrainedTokenizerBase) -> Any:
    """Pads a micro-batch to its longest row: ``input_ids`` with the pad token (attention mask 0),
    ``labels`` with -100 so padding takes no loss (``DataCollatorForSeq2Seq`` pads both)."""
    from transformers import DataCollatorForSeq2Seq

    from planner.data import IGNORED

    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORED)


def tokenizer_for(spec: SweepSpec) -> PreTrainedTokenizerBase:
    """The spec's tokenizer, with a pad token (EOS when it has none) for dynamic padding."""
    from planner.data import load_tokenizer

    tokenizer = load_tokenizer(spec)
    if tokenizer is None:
        raise ConfigError(
            "data.tokenizer",
            "training needs a tokenizer: neither data.tokenizer nor the model's directory has one",
            "set data.tokenizer to a directory with tokenizer.json",
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_model(spec: SweepSpec, config: TrainingConfig) -> nn.Module:
    """The trial's model: fresh weights from the config (``init: random``) or the pretrained ones.

    Both go through the Trainer-step layer's builder (:func:`planner.step.build_model`): NF4 base
    for QLoRA, peft's k-bit preparation, LoRA in the dtype the estimator traced, checkpointing; so
    a traced step and a run step are the same model on every init path. Call
    ``transformers.set_seed`` first: every trial then starts from the same weights and differs only
    by its hyperparameters.
    """
    from planner.models import load_model_config
    from planner.step import build_model as build_step_model

    pretrained = config.model if spec.init == "pretrained" else None
    return build_step_model(load_model_config(config.model), config, pretrained=pretrained)


def _save_schedule(spec: SweepSpec, has_eval: bool) -> dict[str, Any]:
    """Checkpoint cadence: ``checkpoint_every_steps``, else at every eval, else once per epoch."""
    if spec.checkpoint_every_steps is not None:
        return {"save_strategy": "steps", "save_steps": spec.checkpoint_every_steps}
    if has_eval and spec.eval.strategy == "steps":
        return {"save_strategy": "steps", "save_steps": spec.eval.every_steps}
    return {"save_strategy": "epoch"}


def training_arguments(
    spec: SweepSpec, trial: PlannedTrial, output_dir: Path | None, report_to: Sequence[str] = ()
) -> dict[str, Any]:
    """``TrainingArguments`` keyword arguments of a trial: what it runs with, and what is exported.

    ``output_dir`` None leaves it out (the exported best config). Losses are logged every optimizer
    step, unfiltered, so divergence is seen the step it happens.
    """
    from planner.step import TRAINER_OPTIM_NAMES

    config, hyper = trial.config, trial.hyper
    has_eval = spec.data.eval is not None and spec.eval.strategy != "no"
    arguments: dict[str, Any] = {
        "per_device_train_batch_size": config.micro_batch,
        "per_device_eval_batch_size": config.micro_batch,
        "gradient_accumulation_steps": config.gradient_accumulation,
        "learning_rate": hyper.learning_rate,
        "num_train_epochs": hyper.epochs,
        "max_steps": hyper.max_steps if hyper.max_steps is not None else -1,
        "weight_decay": hyper.weight_decay,
        "warmup_steps": hyper.warmup_ratio,  # below 1: a ratio of the total steps (Trainer's rule)
        "lr_scheduler_type": hyper.scheduler.value,
        "optim": TRAINER_OPTIM_NAMES[config.optimizer],
        "bf16": config.precision is Precision.BF16,
        "fp16": config.precision is Precision.FP16,
        "activation_checkpointing": config.gradient_checkpointing,
        "eval_strategy": spec.eval.strategy if has_eval else "no",
        **_save_schedule(spec, has_eval),
        "seed": spec.seed,
        "data_seed": spec.seed,
        "report_to": list(report_to) or "none",
    }
    if config.torch_compile:
        arguments["torch_compile"] = True
    if config.parallelism.world_size > 1:
        # Every trainable parameter takes part in every forward (frozen ones have no gradient to
        # wait for); Trainer's default (find them, unless checkpointing) costs a graph traversal
        # per step and DDP warns about it.
        arguments["ddp_find_unused_parameters"] = False
    if has_eval and spec.eval.strategy == "steps":
        arguments["eval_steps"] = spec.eval.every_steps
    if output_dir is not None:
        arguments.update(
            output_dir=str(output_dir),
            logging_steps=1,
            logging_nan_inf_filter=False,
            save_total_limit=1,
            disable_tqdm=True,
            remove_unused_columns=False,
            # Trainer's own count of the tokens it is fed (attention mask sum), to set against the
            # planner's (DataStats.epoch_tokens).
            include_num_input_tokens_seen="non_padding",
            use_cpu=not torch.cuda.is_available(),
        )
    return arguments
