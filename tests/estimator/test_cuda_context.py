"""The CUDA context by its parts: thread stacks per resident thread, the fixed buffers, the rest."""

from __future__ import annotations

from planner.estimator import cuda_context, default_overhead, overhead_from_profiles
from planner.schema import GIB, MIB, MeasuredProfile, ProfileKey, StepMeasurement, TrainingConfig
from tests.conftest import make_card


def _card(sm_count: int | None, compute_capability: str = "8.0"):
    return make_card(80_000, compute_capability).model_copy(update={"sm_count": sm_count})


def test_the_context_grows_with_the_sm_count() -> None:
    small, large = cuda_context(_card(40), "LAZY"), cuda_context(_card(132), "LAZY")
    # By hand: 2048 resident threads per SM on sm80, 1 KiB of stack each, one reservation per SM.
    assert large.bytes - small.bytes == (132 - 40) * 2048 * 1024
    # 108 SMs (an A100): 216 MiB of stacks, 9 MiB of printf FIFO and malloc heap, 250 MiB default.
    assert cuda_context(_card(108), "LAZY").bytes == 216 * MIB + 9 * MIB + 250 * MIB


def test_threads_per_sm_follow_the_compute_capability() -> None:
    turing, ada, hopper = (cuda_context(_card(100, cc), "LAZY") for cc in ("7.5", "8.9", "9.0"))
    assert ada.bytes - turing.bytes == 100 * (1536 - 1024) * 1024
    assert hopper.bytes - ada.bytes == 100 * (2048 - 1536) * 1024


def test_the_context_states_its_source_and_eager_loading_adds_kernels() -> None:
    context = cuda_context(_card(132, "9.0"), "LAZY")
    assert "132 SMs x 2048 threads" in context.basis and "cudaLimitStackSize" in context.basis
    overhead = default_overhead(_card(132, "9.0"))
    assert overhead.context_bytes == cuda_context(_card(132, "9.0")).bytes
    assert "cudaLimitStackSize" in overhead.context_source
    eager = cuda_context(_card(132, "9.0"), "EAGER")
    assert eager.bytes > context.bytes and "eager" in eager.basis
    assert eager.uncertainty > context.uncertainty
    unknown = cuda_context(_card(None), "LAZY")
    assert unknown.bytes == 500 * MIB and "SM count unknown" in unknown.basis


def test_a_measured_profile_still_overrides_it(tiny_models: dict[str, str]) -> None:
    card = _card(132, "9.0")
    config = TrainingConfig(model=tiny_models["llama"])
    measured = MeasuredProfile(
        key=ProfileKey.of(config, card.name),
        device="cuda",
        device_name="NVIDIA Test",
        versions={},
        measurements=[
            StepMeasurement(
                micro_batch=1,
                forward_backward_seconds=0.1,
                forward_backward_p10_seconds=0.09,
                forward_backward_p90_seconds=0.11,
                optimizer_seconds=0.05,
                eval_forward_seconds=0.03,
                tokens_per_second=1000.0,
                peak_allocated_bytes=10 * GIB,
                peak_reserved_bytes=11 * GIB,
                nvml_used_bytes=11 * GIB + 321 * MIB,
            )
        ],
        context_bytes=321 * MIB,
        created="2025-01-01T00:00:00+00:00",
    )
    overhead = overhead_from_profiles(card, [measured])
    assert overhead is not None and overhead.context_bytes == 321 * MIB
    assert "measured" in overhead.context_source


def test_a_stack_with_eager_module_loading_gets_the_eager_context(tiny_models: dict[str, str]) -> None:
    from planner.estimator import Estimator
    from planner.schema import TargetStack

    card = _card(80, "7.0")
    eager = TrainingConfig(
        model=tiny_models["llama"], precision="fp32", stack=TargetStack(cuda_module_loading="eager")
    )
    lazy = eager.with_changes(stack=TargetStack(cuda_module_loading="lazy"))
    # By hand: 80 SMs x 2048 threads x 1 KiB = 160 MiB, 9 MiB buffers, 250 MiB rest, 362 MiB eager kernels.
    assert Estimator(eager, card).overhead.context_bytes == (160 + 9 + 250 + 362) * MIB
    assert Estimator(lazy, card).overhead.context_bytes == (160 + 9 + 250) * MIB
