"""bitsandbytes' paged 8-bit AdamW on a CUDA card: its large state lives outside the allocator."""

from __future__ import annotations

import pytest

from planner.estimator import Estimator
from planner.schema import MIB, TrainingConfig
from tests.conftest import TINY_CONFIGS, make_card, write_model

VOCAB = 32768
HIDDEN = TINY_CONFIGS["llama"]["hidden_size"]


@pytest.fixture(scope="module")
def wide_vocab_llama(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Untied embedding and head of 32768 x 64 = 2,097,152 elements each: over bitsandbytes'
    1e5-element paging threshold (every other weight is under it) and a multiple of 512."""
    config = {**TINY_CONFIGS["llama"], "vocab_size": VOCAB}
    return str(write_model(tmp_path_factory.mktemp("paged") / "llama", config))


def _config(model: str, optimizer: str) -> TrainingConfig:
    return TrainingConfig(model=model, seq_len=64, precision="bf16", optimizer=optimizer)


# By hand: state1 and state2 of each paged parameter, one uint8 per element (bitsandbytes'
# Optimizer2State.init_state with optim_bits=8), for the embedding and the head.
PAGED_BY_HAND = 2 * 2 * VOCAB * HIDDEN


def test_paged_state_is_outside_allocated_and_reserved(wide_vocab_llama: str) -> None:
    card = make_card(4096)
    paged = Estimator(_config(wide_vocab_llama, "paged_adamw_8bit"), card).estimate(2)
    plain = Estimator(_config(wide_vocab_llama, "adamw_8bit"), card).estimate(2)
    assert paged.paged_bytes == PAGED_BY_HAND and plain.paged_bytes == 0
    # The same allocations less the paged buffers, live throughout: allocated drops by exactly them.
    assert plain.peak_allocated_bytes - paged.peak_allocated_bytes == PAGED_BY_HAND
    # Reserved drops by them up to one large segment's rounding (20 MiB segments under 10 MiB).
    assert plain.peak_reserved_bytes - PAGED_BY_HAND - 20 * MIB <= paged.peak_reserved_bytes
    assert paged.peak_reserved_bytes <= plain.peak_reserved_bytes
    # On a roomy card the managed memory sits on the device: device-used is about the same.
    assert paged.breakdown.paged_on_device == PAGED_BY_HAND
    assert paged.peak_bytes == paged.peak_reserved_bytes + 500 * MIB + PAGED_BY_HAND
    assert abs(paged.peak_bytes - plain.peak_bytes) <= 20 * MIB
    assert plain.breakdown.optimizer_state - paged.breakdown.optimizer_state == PAGED_BY_HAND
    assert paged.breakdown.total == paged.peak_bytes


def test_the_linear_fit_leaves_paged_state_out_too(wide_vocab_llama: str) -> None:
    card = make_card(4096)
    paged = Estimator(_config(wide_vocab_llama, "paged_adamw_8bit"), card).estimate(2, trace=False)
    plain = Estimator(_config(wide_vocab_llama, "adamw_8bit"), card).estimate(2, trace=False)
    assert paged.paged_bytes == PAGED_BY_HAND
    assert plain.peak_allocated_bytes - paged.peak_allocated_bytes == PAGED_BY_HAND


def test_paged_state_does_not_decide_the_fit(wide_vocab_llama: str) -> None:
    config = _config(wide_vocab_llama, "paged_adamw_8bit")
    at_one = Estimator(config, make_card(4096)).estimate(1)
    # A card with room for the allocator's part at micro-batch 1 and 1 MiB more: the 8 MiB of
    # paged state cannot all stay on it, and the driver pages the rest to host memory.
    card = make_card(-(-(at_one.peak_reserved_bytes + 500 * MIB) // MIB) + 1)
    estimator = Estimator(config, card)
    best = estimator.max_micro_batch()
    assert best >= 1
    at_best = estimator.estimate(best)
    assert at_best.fits and at_best.breakdown.paged_on_device < PAGED_BY_HAND
    assert at_best.peak_bytes <= card.available_bytes
    assert at_best.breakdown.total == at_best.peak_bytes
    # The next size fails in the allocator's replay, with or without the paged state.
    assert not estimator.estimate(best + 1).fits
