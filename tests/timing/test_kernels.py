"""Per-op efficiency curves: never above the card's peak, monotone in work; the launch queue and
compiled fusion behave as their rules say."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.cards import load_card, shipped_cards
from planner.schema import TrainingConfig
from planner.timing._compiled import compiled_kernels
from planner.timing._counter import AttentionShape, GemmShape, OpCost, PhaseCosts
from planner.timing._kernels import (
    Kernel,
    achievable_fraction,
    attention_efficiency,
    eager_kernels,
    gemm_efficiency,
    queue_seconds,
)
from planner.timing._roofline import device_model

GPU_CARDS = [card for card in shipped_cards() if card.kind == "gpu"]
cards = st.sampled_from([*GPU_CARDS, GPU_CARDS[0].model_copy(update={"sm_count": None})])
sizes = st.integers(min_value=1, max_value=70_000)


def gemm_op(batch: int, m: int, n: int, k: int) -> OpCost:
    nbytes = 2 * batch * (m * k + k * n + m * n)
    return OpCost(kind="gemm", flops=2 * batch * m * n * k, bytes=nbytes, gemm=GemmShape(batch, m, n, k))


@settings(max_examples=300, deadline=None)
@given(card=cards, batch=st.integers(1, 64), m=sizes, n=sizes, k=sizes)
def test_gemm_efficiency_never_exceeds_the_cards_measured_peak(card, batch, m, n, k) -> None:
    for half in (True, False):
        efficiency = gemm_efficiency(card, GemmShape(batch, m, n, k), half)
        assert 0 < efficiency <= achievable_fraction(card, half) < 1.1
    # The achieved rate of a timed GEMM stays under the card's measured best rate, too.
    config = TrainingConfig(model="x", precision="fp16")
    model = device_model(card, config)
    op = gemm_op(batch, m, n, k)
    best = card.tflops.fp16 * 1e12 * achievable_fraction(card)  # type: ignore[operator]
    assert op.flops / model.device_seconds(op) <= best * (1 + 1e-9)


@settings(max_examples=200, deadline=None)
@given(card=cards, batch=st.integers(1, 8), m=sizes, n=sizes, k=sizes, grow=st.sampled_from("bmnk"))
def test_a_bigger_gemm_never_takes_less_time(card, batch, m, n, k, grow) -> None:
    model = device_model(card, TrainingConfig(model="x", precision="fp16"))
    shape = {"b": batch, "m": m, "n": n, "k": k}
    bigger = {**shape, grow: shape[grow] + 1 + shape[grow] // 7}
    small, large = gemm_op(*shape.values()), gemm_op(*bigger.values())
    assert model.device_seconds(large) >= model.device_seconds(small)


@settings(max_examples=200, deadline=None)
@given(cards, st.integers(1, 512), st.integers(1, 32_768), st.sampled_from([64, 128]))
def test_attention_efficiency_is_a_fraction_of_peak(card, heads, length, head_dim) -> None:
    for half in (True, False):
        shape = AttentionShape(heads, length, length, head_dim, backward=False, causal=True)
        assert 0 < attention_efficiency(card, shape, half) < 0.75


def test_small_gemms_are_far_from_peak_and_large_ones_near_it() -> None:
    a100 = load_card("a100-80gb")
    assert gemm_efficiency(a100, GemmShape(1, 8192, 8192, 8192)) > 0.8
    assert gemm_efficiency(a100, GemmShape(1, 64, 64, 4096)) < 0.05  # one tile on 108 SMs


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1e-3), st.floats(0, 1e-3)), max_size=40))
def test_the_queue_is_bounded_by_its_cpu_and_gpu_work(pairs) -> None:
    kernels = [Kernel(device=d, cpu=c) for d, c in pairs]
    total = queue_seconds(kernels)
    cpu, gpu = sum(c for _, c in pairs), sum(d for d, _ in pairs)
    assert max(cpu, gpu) - 1e-12 <= total <= cpu + gpu + 1e-12
    assert queue_seconds([*kernels, Kernel(1e-4, 1e-5)]) >= total  # one more op never saves time


def test_compiling_fuses_a_run_of_memory_ops_and_keeps_what_is_read_later() -> None:
    card = load_card("a100-80gb")
    model = device_model(card, TrainingConfig(model="x"))
    mb = 1 << 20
    # x -> y -> z -> w element-wise, then a matmul reading w; z is also read by the backward.
    forward = [
        OpCost("memory", 0, 2 * mb, reads=((1, mb),), writes=((2, mb),)),
        OpCost("memory", 0, 2 * mb, reads=((2, mb),), writes=((3, mb),)),
        OpCost("memory", 0, 2 * mb, reads=((3, mb),), writes=((4, mb),)),
        gemm_op(1, 512, 512, 512),
    ]
    backward = [OpCost("memory", 0, 2 * mb, reads=((3, mb),), writes=((5, mb),))]
    phases = {"forward": PhaseCosts(forward), "backward": PhaseCosts(backward)}
    compiled = compiled_kernels(phases, model)
    eager = eager_kernels(forward, model)
    assert len(compiled["forward"]) == 2  # one fused kernel + the matmul
    fused_bytes = (1 + 1 + 1) * mb  # reads x; writes z (read by backward) and w (the last)
    fused = model.device_seconds(OpCost("memory", 0, fused_bytes))
    assert compiled["forward"][0].device == pytest.approx(fused)
    assert sum(k.device for k in compiled["forward"]) < sum(k.device for k in eager)
    assert sum(k.cpu for k in compiled["forward"]) < sum(k.cpu for k in eager)


def test_a_volta_fp32_matmul_keeps_more_of_its_peak_than_its_tensor_cores_do() -> None:
    # V100 SXM2 16GB, torch-performance-test-data issue #140: best square torch.mm 14.51 TFLOPS in
    # fp32 (peak 15.7, CUDA cores) and 97.36 in fp16 (peak 125, tensor cores).
    v100 = load_card("v100-sxm2-16gb")
    assert achievable_fraction(v100, half=False) == pytest.approx(14.51 / 15.7)
    assert achievable_fraction(v100, half=True) == pytest.approx(97.36 / 125.0)
    # 8192^3 is whole 256x128 tiles in whole waves of 80 SMs (32 x 64 = 2048 tiles = 25.6 waves:
    # the best tile wastes under 2%), so it runs at nearly the measured fraction.
    shape = GemmShape(1, 8192, 8192, 8192)
    assert gemm_efficiency(v100, shape, half=False) == pytest.approx(14.51 / 15.7, rel=0.03)
    fp32 = TrainingConfig(model="x", precision="fp32")
    op = OpCost(kind="gemm", flops=2 * 8192**3, bytes=3 * 4 * 8192**2, half=False, gemm=shape)
    seconds = device_model(v100, fp32).device_seconds(op)
    assert 2 * 8192**3 / seconds == pytest.approx(14.51e12, rel=0.03)


def test_an_unmeasured_card_takes_the_default_fraction() -> None:
    a10g = load_card("a10g")
    assert achievable_fraction(a10g, half=True) == achievable_fraction(a10g, half=False) == 0.80
