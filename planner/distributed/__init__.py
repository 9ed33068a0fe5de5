"""Training across GPUs: one rank of a DDP / FSDP / ZeRO job, its memory and its communication.

Per-rank memory is traced on one rank (the fullest) of a fake process group with the real engine code (FSDP2's
``fully_shard`` as accelerate applies it, DDP's gradient buckets as its ``Reducer`` allocates
them, DeepSpeed's ZeRO engine itself); offloaded ZeRO's model states follow DeepSpeed's own
formulas; communication volumes per step come from the strategy's collectives.
"""

from planner.distributed._comm import (
    INTER_NODE_GBS,
    Collective,
    CommunicationTime,
    ModelSizes,
    communication_time,
    step_collectives,
)
from planner.distributed._ddp import BUCKET_CAP_BYTES, FIRST_BUCKET_BYTES, GRADIENT_BUCKETS, gradient_buckets
from planner.distributed._deepspeed import deepspeed_config, deepspeed_installed, fullest_rank
from planner.distributed._fsdp import mixed_precision_policy, shard_like_accelerate
from planner.distributed._measure import free_port, measured_rank_peaks
from planner.distributed._nccl import NcclEnvironment, NcclMemory, nccl_memory
from planner.distributed._prepare import Prepare, check_traceable, rank_preparer
from planner.distributed._sizes import model_sizes, zero_states
from planner.distributed._world import fake_mesh
from planner.distributed._zero import ZeroModelStates, zero_model_states

__all__ = [
    "BUCKET_CAP_BYTES",
    "FIRST_BUCKET_BYTES",
    "GRADIENT_BUCKETS",
    "INTER_NODE_GBS",
    "Collective",
    "CommunicationTime",
    "ModelSizes",
    "NcclEnvironment",
    "NcclMemory",
    "Prepare",
    "ZeroModelStates",
    "check_traceable",
    "communication_time",
    "deepspeed_config",
    "deepspeed_installed",
    "fake_mesh",
    "free_port",
    "fullest_rank",
    "gradient_buckets",
    "measured_rank_peaks",
    "mixed_precision_policy",
    "model_sizes",
    "nccl_memory",
    "rank_preparer",
    "shard_like_accelerate",
    "step_collectives",
    "zero_model_states",
    "zero_states",
]
