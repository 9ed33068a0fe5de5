"""A paged optimizer's host traffic: timed over the card's host link when its state does not fit."""

from __future__ import annotations

import pytest

from planner.cards import load_card, shipped_cards
from planner.estimator import Estimator
from planner.schema import GIB, Card, HostLink, MemoryEstimate, Parallelism, TrainingConfig
from planner.timing import StepTimeModel, rank_step_times
from planner.timing._paging import HOST_LINK_SPREAD, host_paging, with_paging_interval
from tests.conftest import TINY_CONFIGS, make_card, write_model

GEN4_X16 = HostLink(pcie_generation=4, lanes=16, source="test")


@pytest.fixture(scope="module")
def paged_estimate(tmp_path_factory: pytest.TempPathFactory) -> MemoryEstimate:
    """A real estimate of a paged 8-bit AdamW step (embedding and head over bitsandbytes' paging
    threshold), on a roomy card: all of its paged state sits on the device."""
    model = write_model(
        tmp_path_factory.mktemp("paging") / "llama", {**TINY_CONFIGS["llama"], "vocab_size": 32768}
    )
    config = TrainingConfig(model=str(model), seq_len=64, precision="bf16", optimizer="paged_adamw_8bit")
    estimate = Estimator(config, make_card(4096)).estimate(2, trace=False)
    assert estimate.paged_bytes > 0 and estimate.breakdown.paged_on_device == estimate.paged_bytes
    return estimate


def _with(estimate: MemoryEstimate, *, paged: int, room: int) -> MemoryEstimate:
    """``estimate`` with ``paged`` bytes of paged state, ``room`` of them on the device."""
    breakdown = estimate.breakdown.model_copy(update={"paged_on_device": min(paged, room)})
    return estimate.model_copy(update={"paged_bytes": paged, "breakdown": breakdown})


def _linked(card: Card) -> Card:
    return card.model_copy(update={"host_link": GEN4_X16})


def test_the_pcie_spec_gives_each_generation_its_raw_rate() -> None:
    # 8/16/32 GT/s x 16 lanes x 128/130 / 8 bits, per direction.
    assert HostLink(pcie_generation=3, lanes=16, source="").raw_gbs == pytest.approx(15.754, abs=1e-3)
    assert GEN4_X16.raw_gbs == pytest.approx(31.508, abs=1e-3)
    assert HostLink(pcie_generation=5, lanes=16, source="").raw_gbs == pytest.approx(63.015, abs=1e-3)
    assert HostLink(pcie_generation=4, lanes=8, source="").raw_gbs == pytest.approx(GEN4_X16.raw_gbs / 2)


def test_every_shipped_card_names_its_host_link() -> None:
    assert all(card.host_link is not None and card.host_link.source for card in shipped_cards())
    links = {name: load_card(name).host_link for name in ("rtx-4090", "a100-80gb", "h100-sxm", "t4")}
    described = {name: link.describe() for name, link in links.items() if link is not None}
    assert described == {
        "rtx-4090": "PCIe 4.0 x16",
        "a100-80gb": "PCIe 4.0 x16",
        "h100-sxm": "PCIe 5.0 x16",
        "t4": "PCIe 3.0 x16",
    }


def test_nothing_is_paged_when_the_state_fits(paged_estimate: MemoryEstimate) -> None:
    card = _linked(make_card(4096))
    assert host_paging(paged_estimate, card) is None
    assert host_paging(_with(paged_estimate, paged=0, room=0), card) is None
    model = StepTimeModel(card)
    config = paged_estimate.config
    without = model.times(config, 2, 64)
    fitting = model.times(config, 2, 64, paged_estimate)
    assert fitting == without and fitting.paging == 0.0


def test_paging_is_both_directions_of_all_the_state_at_the_pinned_copy_rate(
    paged_estimate: MemoryEstimate,
) -> None:
    card = _linked(make_card(4096))
    paging = host_paging(_with(paged_estimate, paged=10 * GIB, room=2 * GIB), card)
    assert paging is not None and paging.seconds is not None
    # By hand: past the room, a cyclic sweep under the driver's LRU misses every chunk, so all 10 GiB
    # come in and go out; at 12/15.75 of PCIe 4.0 x16's 31.5 GB/s, in and out in turn.
    rate = 16e9 * 16 * 128 / 130 / 8 * 12 / 15.75
    assert paging.crossing_bytes == 20 * GIB
    assert paging.seconds == pytest.approx(20 * GIB / rate)
    assert "20.0 GiB over the host link" in paging.note


def test_paging_never_shrinks_with_more_paged_state(paged_estimate: MemoryEstimate) -> None:
    card = _linked(make_card(4096))
    room = 3 * GIB
    seconds = []
    for paged in (GIB, 3 * GIB, 3 * GIB + 1, 4 * GIB, 8 * GIB, 16 * GIB):
        paging = host_paging(_with(paged_estimate, paged=paged, room=room), card)
        seconds.append(0.0 if paging is None else paging.seconds)
    assert seconds == sorted(seconds)
    assert seconds[:2] == [0.0, 0.0] and seconds[2] > 0


def test_the_step_time_adds_paging_to_the_optimizer_and_widens_the_interval(
    paged_estimate: MemoryEstimate,
) -> None:
    card = _linked(make_card(4096))
    model = StepTimeModel(card)
    config = paged_estimate.config
    plain = model.times(config, 2, 64)
    memory = _with(paged_estimate, paged=2 * GIB, room=GIB)
    paged = model.times(config, 2, 64, memory)
    paging = host_paging(memory, card)
    assert paging is not None and paging.seconds is not None
    assert paged.paging == pytest.approx(paging.seconds)
    assert paged.optimizer == pytest.approx(plain.optimizer + paging.seconds)
    assert paged.micro_step == plain.micro_step
    assert "all of it migrates in and out every optimizer step" in paged.note
    # The interval combines the step's spread with the host link's, both as fractions of the whole.
    stepped = plain.micro_step + plain.optimizer
    assert paged.relative_interval == with_paging_interval(plain.relative_interval, stepped, paging.seconds)
    low, high = paged.relative_interval
    assert low < 1 < high


def test_paging_dominating_the_step_takes_the_host_links_spread() -> None:
    low, high = with_paging_interval((0.8, 1.3), 1e-9, 10.0)
    assert low == pytest.approx(HOST_LINK_SPREAD[0], rel=1e-6)
    assert high == pytest.approx(HOST_LINK_SPREAD[1], rel=1e-6)
    assert with_paging_interval((0.8, 1.3), 2.0, 0.0) == (0.8, 1.3)


def test_a_card_without_a_host_link_leaves_paging_untimed_and_says_so(paged_estimate: MemoryEstimate) -> None:
    card = make_card(4096)
    assert card.host_link is None
    memory = _with(paged_estimate, paged=2 * GIB, room=GIB)
    paging = host_paging(memory, card)
    assert paging is not None and paging.seconds is None and paging.crossing_bytes == 4 * GIB
    times = StepTimeModel(card).times(paged_estimate.config, 2, 64, memory)
    assert times.paging == 0.0
    assert f"not timed: {card.name} names no host link" in times.note
    assert times.optimizer == StepTimeModel(card).times(paged_estimate.config, 2, 64).optimizer


def test_a_ranks_paging_is_not_divided_between_the_shards(paged_estimate: MemoryEstimate) -> None:
    card = _linked(make_card(4096))
    step = StepTimeModel(card).times(
        paged_estimate.config, 2, 64, _with(paged_estimate, paged=2 * GIB, room=GIB)
    )
    sharded = paged_estimate.config.with_changes(parallelism=Parallelism(strategy="fsdp", gpus_per_node=4))
    rank = rank_step_times(step, sharded, card)  # no interconnect on the test card: no communication
    assert rank.optimizer == pytest.approx((step.optimizer - step.paging) / 4 + step.paging)
