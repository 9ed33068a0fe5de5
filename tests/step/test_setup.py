"""Our optimizer table agrees with what Trainer builds for each ``optim`` name."""

from __future__ import annotations

import pytest
import torch
from transformers import Trainer, TrainingArguments

from planner.schema import OptimizerName
from planner.step import TRAINER_OPTIM_NAMES, make_optimizer, optimizer_implementation


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


@pytest.mark.parametrize(
    ("optim", "on_cuda", "implementation"),
    [
        ("adamw_torch_fused", True, "fused"),
        ("adamw_torch_fused", False, "fused"),
        ("adamw_torch", True, "foreach"),
        ("adamw_torch", False, "for-loop"),
    ],
)
def test_the_adamw_implementation_is_the_one_trainer_gets_on_the_device(
    optim: str, on_cuda: bool, implementation: str, tmp_path
):
    from torch.utils._foreach_utils import _get_foreach_kernels_supported_devices

    args = TrainingArguments(output_dir=str(tmp_path), optim=optim, use_cpu=True, report_to=[])
    _, trainer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    # Trainer sets fused for adamw_torch_fused alone; otherwise torch picks foreach where the
    # parameters' device has foreach kernels (CUDA does, the CPU does not).
    fused = bool(trainer_kwargs.get("fused"))
    foreach = (
        not fused
        and "foreach" not in trainer_kwargs
        and (("cuda" if on_cuda else "cpu") in _get_foreach_kernels_supported_devices())
    )
    trainer_implementation = "fused" if fused else "foreach" if foreach else "for-loop"
    name = next(ours for ours, trainer in TRAINER_OPTIM_NAMES.items() if trainer == optim)
    assert optimizer_implementation(name, on_cuda=on_cuda) == trainer_implementation == implementation


def test_the_padded_batchs_mask_rules_flash_out_on_cuda(tiny_models: dict[str, str]):
    from planner.models import load_model_config
    from planner.schema import TrainingConfig
    from planner.step import cuda_target, sdpa_backend
    from tests.conftest import make_card

    ampere = make_card(24 * 1024, compute_capability="8.6")
    assert sdpa_backend(ampere, half_precision=True, head_size=64) == "flash"
    assert sdpa_backend(ampere, half_precision=True, head_size=64, masked=True) == "efficient"
    config = TrainingConfig(model=tiny_models["llama"], seq_len=32)
    target = cuda_target(ampere, config, load_model_config(config.model))
    assert target is not None and target.sdpa_backend == "efficient"
