"""A traced step's allocation stream, replayed through the caching-allocator model."""

from __future__ import annotations

from itertools import accumulate

from planner.allocator import AllocatorConfig
from planner.estimator import Estimator
from planner.estimator._replay import replay_step
from planner.models import load_model_config
from planner.schema import TrainingConfig
from planner.step import CudaTarget, StepTracer
from tests.conftest import make_card

CUDA = CudaTarget(sdpa_backend="flash")


def test_the_stream_is_what_the_tracker_saw(tiny_models: dict[str, str]) -> None:
    config = TrainingConfig(model=tiny_models["llama"], method="lora", precision="bf16", seq_len=32)
    tracer = StepTracer(load_model_config(config.model), config, cuda=CUDA)
    trace = tracer.trace(2)
    stream = trace.allocations
    assert stream is not None and stream.setup and stream.step
    resident = sum(delta for _, delta in stream.setup)
    assert resident == tracer.resident_bytes  # weights, quant state, optimizer state
    # The step's running total of live bytes peaks where the trace says the step peaks.
    assert resident + max(accumulate(delta for _, delta in stream.step)) == trace.peak
    assert tracer.trace(2).allocations == stream  # numbered by first appearance: repeatable


def test_replay_reserves_at_least_what_is_allocated_and_decides_fit(tiny_models: dict[str, str]) -> None:
    config = TrainingConfig(model=tiny_models["llama"], seq_len=64, precision="bf16")
    trace = Estimator(config, make_card(4096)).full_trace(4)
    assert trace.allocations is not None
    roomy = replay_step(
        trace.allocations, workspace_bytes=8 << 20, capacity=1 << 40, config=AllocatorConfig()
    )
    assert roomy.fits and roomy.allocated >= trace.peak + (8 << 20)
    assert roomy.reserved >= roomy.allocated and roomy.reserved % (2 << 20) == 0 and roomy.segments >= 1
    tight = replay_step(
        trace.allocations, workspace_bytes=8 << 20, capacity=roomy.allocated - 1, config=AllocatorConfig()
    )
    assert not tight.fits  # not even the live tensors fit


def test_a_loop_that_empties_the_cache_every_step_replays_each_step_afresh(
    tiny_models: dict[str, str],
) -> None:
    """The stack's ``empty_cache_every_step`` puts an empty-cache event before each replayed step;
    what is allocated does not change, and what is reserved never exceeds the kept cache's."""
    from planner.estimator._replay import _events

    config = TrainingConfig(model=tiny_models["llama"], seq_len=64, precision="bf16")
    trace = Estimator(config, make_card(4096)).full_trace(4)
    assert trace.allocations is not None
    emptied = list(_events(trace.allocations, 8 << 20, 2, empty_cache_every_step=True))
    assert [e.kind for e in emptied].count("empty_cache") == 2
    assert [e for e in emptied if e.kind != "empty_cache"] == list(_events(trace.allocations, 8 << 20, 2))
    kept = replay_step(trace.allocations, workspace_bytes=8 << 20, capacity=1 << 40, config=AllocatorConfig())
    afresh = replay_step(
        trace.allocations,
        workspace_bytes=8 << 20,
        capacity=1 << 40,
        config=AllocatorConfig(),
        empty_cache_every_step=True,
    )
    assert afresh.allocated == kept.allocated and afresh.reserved <= kept.reserved
    stacked = config.model_copy(
        update={"stack": config.stack.model_copy(update={"empty_cache_every_step": True})}
    )
    estimated, plain = (
        Estimator(stacked, make_card(4096)).replayed(4),
        Estimator(config, make_card(4096)).replayed(4),
    )
    assert estimated is not None and plain is not None
    assert estimated.allocated == plain.allocated and estimated.reserved <= plain.reserved


def test_cuda_estimates_report_the_replay_and_host_estimates_do_not(tiny_models: dict[str, str]) -> None:
    from planner.cards import host_card

    config = TrainingConfig(model=tiny_models["llama"], seq_len=64, precision="bf16")
    on_gpu = Estimator(config, make_card(4096)).estimate(2)
    assert on_gpu.segments and on_gpu.peak_reserved_bytes >= on_gpu.peak_allocated_bytes
    assert on_gpu.peak_bytes == on_gpu.peak_reserved_bytes + 500 * 2**20  # the default context
    assert on_gpu.breakdown.total == on_gpu.peak_bytes
    assert "replayed" in on_gpu.expected_error
    on_host = Estimator(config, host_card()).estimate(2)
    assert on_host.segments is None and on_host.peak_reserved_bytes == on_host.peak_allocated_bytes


def test_an_optimizer_that_replaces_its_state_replays(tiny_models: dict[str, str]) -> None:
    # Adafactor assigns new state tensors each step: setup blocks freed inside the step.
    config = TrainingConfig(model=tiny_models["llama"], seq_len=64, precision="fp32", optimizer="adafactor")
    estimate = Estimator(config, make_card(4096)).estimate(2)
    assert estimate.segments and estimate.peak_reserved_bytes >= estimate.peak_allocated_bytes
