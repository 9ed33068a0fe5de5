"""Our optimizer table agrees with what Trainer builds for each ``optim`` name."""

from __future__ import annotations

import pytest
import torch
from transformers import Trainer, TrainingArguments

from planner.schema import OptimizerName
from planner.step import TRAINER_OPTIM_NAMES, make_optimizer


@pytest.mark.parametrize("name", list(OptimizerName))
def test_optimizer_table_matches_trainer(name: OptimizerName, tmp_path):
    args = TrainingArguments(
        output_dir=str(tmp_path), optim=TRAINER_OPTIM_NAMES[name], use_cpu=True, report_to=[]
    )
    trainer_cls, trainer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    param = torch.nn.Parameter(torch.zeros(8))
    ours = make_optimizer(name, [param], lr=args.learning_rate)
    assert isinstance(ours, trainer_cls)
    # bitsandbytes keeps optim_bits/is_paged outside ``defaults``: checked below.
    for key, value in trainer_kwargs.items():
        if key not in ("optim_bits", "is_paged"):
            assert ours.defaults[key] == value, key
    if name in (OptimizerName.ADAMW_8BIT, OptimizerName.PAGED_ADAMW_8BIT):
        assert ours.args.optim_bits == trainer_kwargs["optim_bits"]
        assert ours.is_paged == trainer_kwargs["is_paged"]
