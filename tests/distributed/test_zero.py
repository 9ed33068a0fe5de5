"""ZeRO model states per rank against DeepSpeed's own published estimators.

The two reference functions are DeepSpeed 0.19.8's ``estimate_zero2_model_states_mem_needs``
(``deepspeed/runtime/zero/stage_1_and_2.py``) and ``estimate_zero3_model_states_mem_needs``
(``deepspeed/runtime/zero/stage3.py``), GPU side, called as DeepSpeed ships them (a dev dependency).
Their host side counts initialisation buffers (x1.5, the whole model per process without
``zero.Init``), which the planner does not model: only the GPU figures are compared.
"""

from __future__ import annotations

import pytest

from planner.distributed import zero_model_states
from planner.schema import Parallelism

PARAMETERS = 8_030_261_248  # Llama-3.1-8B
LARGEST_LAYER = 525_336_576  # its embedding (128256 x 4096)


def deepspeed_zero2_gpu(total_params: int, gpus: int, nodes: int, cpu_offload: bool) -> int:
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    _, gpu = estimate_zero2_model_states_mem_needs(total_params, gpus, nodes, cpu_offload)
    return int(gpu)


def deepspeed_zero3_gpu(
    total_params: int, largest: int, gpus: int, nodes: int, cpu_offload: bool, cpu_offload_params: bool
) -> int:
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    _, gpu, _ = estimate_zero3_model_states_mem_needs(
        total_params, largest, gpus, nodes, cpu_offload, cpu_offload_params
    )
    return int(gpu)


@pytest.mark.parametrize(("gpus", "nodes"), [(1, 1), (4, 1), (8, 1), (8, 4)])
@pytest.mark.parametrize("offload", ["none", "optimizer"])
def test_zero2_matches_deepspeed(gpus: int, nodes: int, offload: str) -> None:
    parallelism = Parallelism(gpus_per_node=gpus, nodes=nodes, strategy="zero2", offload=offload)
    states = zero_model_states(PARAMETERS, LARGEST_LAYER, parallelism)
    expected = deepspeed_zero2_gpu(PARAMETERS, gpus, nodes, offload != "none")
    assert abs(states.gpu_bytes - expected) <= 1
    assert states.gpu_bytes == states.replicated_bytes + states.partitioned_bytes + states.gathered_bytes


@pytest.mark.parametrize(("gpus", "nodes"), [(1, 1), (4, 1), (8, 1), (8, 4)])
@pytest.mark.parametrize("offload", ["none", "optimizer", "params"])
def test_zero3_matches_deepspeed(gpus: int, nodes: int, offload: str) -> None:
    parallelism = Parallelism(gpus_per_node=gpus, nodes=nodes, strategy="zero3", offload=offload)
    states = zero_model_states(PARAMETERS, LARGEST_LAYER, parallelism)
    expected = deepspeed_zero3_gpu(
        PARAMETERS, LARGEST_LAYER, gpus, nodes, offload != "none", offload == "params"
    )
    assert abs(states.gpu_bytes - expected) <= 1
    assert states.replicated_bytes == 0


def test_zero1_keeps_16_bit_weights_and_gradients_whole() -> None:
    states = zero_model_states(1000, 100, Parallelism(gpus_per_node=4, strategy="zero1"))
    assert states.replicated_bytes == 4 * 1000
    assert states.partitioned_bytes == 16 * 1000 // 4
    assert states.host_bytes == 0


def test_offload_moves_fp32_states_to_the_host() -> None:
    states = zero_model_states(1000, 100, Parallelism(gpus_per_node=4, strategy="zero2", offload="optimizer"))
    assert states.host_bytes == 16 * 1000 // 4
