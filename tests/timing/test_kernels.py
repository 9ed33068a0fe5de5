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
    KERNEL_FLOOR_SECONDS,
    UNMEASURED_GEMM_SPREAD,
    Kernel,
    achievable_fraction,
    attention_efficiency,
    dense_peak_flops,
    eager_kernels,
    gemm_efficiency,
    gemm_seconds,
    l2_bytes_per_second,
    queue_seconds,
    term_spreads,
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
    # 8192^3 is whole 128x128 SIMT tiles in nearly whole waves of 80 SMs (64 x 64 = 4096 tiles =
    # 51.2 waves: 52 waves waste under 2%), so it runs at nearly the measured fraction.
    shape = GemmShape(1, 8192, 8192, 8192)
    assert gemm_efficiency(v100, shape, half=False) == pytest.approx(14.51 / 15.7, rel=0.03)
    fp32 = TrainingConfig(model="x", precision="fp32")
    op = OpCost(kind="gemm", flops=2 * 8192**3, bytes=3 * 4 * 8192**2, half=False, gemm=shape)
    seconds = device_model(v100, fp32).device_seconds(op)
    assert 2 * 8192**3 / seconds == pytest.approx(14.51e12, rel=0.03)


def test_an_unmeasured_card_takes_the_default_fraction() -> None:
    a10g = load_card("a10g")
    assert achievable_fraction(a10g, half=True) == achievable_fraction(a10g, half=False) == 0.80


def test_a_skinny_fp32_gemm_pays_its_tile_and_wave_waste_not_a_reuse_penalty() -> None:
    # A LoRA rank-16 adapter in fp32 on an A100 80GB: 16384 tokens x 4096 features -> 16 columns.
    # FP32 SIMT tiles: 128x32 gives 128 x 1 = 128 tiles = 2 waves of 108 SMs (216 slots); 64x64
    # 256 tiles = 3 waves (324); 32x128 512 tiles = 5 waves (540). 128x32 is best: its multiply-adds
    # 2 * 4096 * 128 * 32 * 216 FLOPs at 19.18 TFLOP/s (the measured fp32 rate) = 0.378 ms, its loads
    # 4096 * (128 + 32) * 4 B * 216 at 5411 GB/s (the card's L2) = 0.105 ms: CUDA cores bind, not L2.
    a100 = load_card("a100-80gb")
    shape = GemmShape(1, 16384, 16, 4096)
    multiply = 2 * 4096 * 128 * 32 * 216 / 19.18e12
    assert multiply > 4096 * 160 * 4 * 216 / 5411e9
    assert gemm_seconds(a100, shape, False, 19.5e12) == pytest.approx(multiply)
    # The whole op on the card: reading the 268 MB input at 80% of 2039 GB/s takes 0.165 ms, so the
    # tile bound sets its time; the old 2.67x reuse penalty of a 64-wide tile gave ~1.2 ms.
    nbytes = 4 * (16384 * 4096 + 4096 * 16 + 16384 * 16)
    op = OpCost(kind="gemm", flops=2 * 16384 * 16 * 4096, bytes=nbytes, half=False, gemm=shape)
    seconds = device_model(a100, TrainingConfig(model="x", precision="fp32")).device_seconds(op)
    assert seconds == pytest.approx(multiply)
    assert nbytes / (2039e9 * 0.8) < seconds < 0.4e-3


def test_a_gemm_with_too_few_output_tiles_splits_k_and_pays_its_reduction() -> None:
    # A LoRA-sized weight gradient, 128 x 128 outputs summed over 16384 tokens, bf16 on an A100 80GB
    # (108 SMs). Unsplit, 64x64 tiles give 4 tiles in one wave of 108 slots: 2 * 16384 * 64 * 64 *
    # 108 FLOPs at 0.859 x 312 TFLOP/s = 83.7 us. Split into 27 partitions (4 x 27 = 108 blocks, one
    # full wave), each over ceil(16384 / 27) = 607 of K: loads 607 * (64 + 64) * 2 B * 108 at 5411 GB/s
    # = 3.10 us (above its multiply-adds, 2.0 us); the reduction writes and reads 27 fp32 partial
    # outputs of 128 x 128 at 80% of 2039 GB/s (2.17 us) and launches one more kernel (3 us).
    a100 = load_card("a100-80gb")
    shape = GemmShape(1, 128, 128, 16384)
    loads = 607 * 128 * 2 * 108 / 5411e9
    assert loads > 2 * 607 * 64 * 64 * 108 / (0.859 * 312e12)
    reduction = 2 * 27 * 128 * 128 * 4 / (0.8 * 2039e9) + KERNEL_FLOOR_SECONDS
    assert gemm_seconds(a100, shape, True, 312e12) == pytest.approx(loads + reduction)
    assert loads + reduction < 0.2 * (2 * 16384 * 64 * 64 * 108 / (0.859 * 312e12))
    # Tiles that fill the card already do not split: 16384 x 4096 outputs are 256 x 128 tiles by the
    # thousand, and the time stays the measured fraction's.
    large = GemmShape(1, 16384, 4096, 16384)
    assert gemm_efficiency(a100, large, True) == pytest.approx(0.859, rel=0.02)


def test_a_large_bf16_gemm_runs_at_the_measured_fraction() -> None:
    # 8192^3 in 256x128 tiles: 32 x 64 = 2048 tiles, 19 waves of 108 (2052 slots). Per tile, the
    # multiply-adds 2 * 8192 * 256 * 128 FLOPs at 312 x 0.859 / 108 TFLOP/s per SM take 2.00 us and
    # the loads 8192 * 384 * 2 B at 5411 / 108 GB/s per SM 1.16 us: compute-bound, so the efficiency
    # is the measured fraction less the wave waste.
    a100 = load_card("a100-80gb")
    assert gemm_efficiency(a100, GemmShape(1, 8192, 8192, 8192)) == pytest.approx(0.859 * 2048 / 2052)


def test_a_gemm_of_64x64_tiles_is_bound_by_its_l2_loads_on_tensor_cores() -> None:
    # 108 batched 64x64 outputs with k = 4096: one 64x64 tile per SM in one wave (larger tiles
    # only add padded work). Multiply-adds: 2 * 4096 * 64 * 64 * 108 FLOPs at 312 x 0.859 TFLOP/s =
    # 13.5 us; loads: 4096 * (64 + 64) * 2 B * 108 at 5411 GB/s = 20.9 us, which sets the time.
    a100 = load_card("a100-80gb")
    shape = GemmShape(108, 64, 64, 4096)
    loads = 4096 * 128 * 2 * 108 / 5411e9
    assert loads > 2 * 4096 * 64 * 64 * 108 / (312e12 * 0.859)
    assert gemm_seconds(a100, shape, True, 312e12) == pytest.approx(loads)
    useful = 2 * 108 * 64 * 64 * 4096
    assert gemm_efficiency(a100, shape) == pytest.approx(useful / (loads * 312e12))


def test_every_gpu_card_has_a_sourced_l2_bandwidth_and_a_card_without_one_falls_back_to_dram() -> None:
    for card in GPU_CARDS:
        assert card.l2_bandwidth_gbs is not None and card.l2_bandwidth_source
        assert card.l2_bandwidth_gbs > card.bandwidth_gbs  # type: ignore[operator]
    a100 = load_card("a100-80gb")
    unknown = a100.model_copy(update={"l2_bandwidth_gbs": None})
    assert l2_bytes_per_second(unknown) == 2039e9


def test_a_card_with_a_scaled_l2_figure_takes_the_wider_gemm_spread() -> None:
    assert term_spreads(load_card("a100-80gb"))["gemm"] != UNMEASURED_GEMM_SPREAD
    rtx4090 = load_card("rtx-4090")  # MAMF measured, L2 scaled from the L40 by SM count
    assert not rtx4090.l2_bandwidth_measured
    assert term_spreads(rtx4090)["gemm"] == UNMEASURED_GEMM_SPREAD


def test_the_dense_peak_of_a_card_without_bf16_is_its_fp16_peak() -> None:
    v100 = load_card("v100-sxm2-16gb")
    assert dense_peak_flops(v100, half=True) == 125e12
    assert dense_peak_flops(v100, half=False) == 15.7e12
