"""Communication per training step: each strategy's collectives, their time on the interconnect,
and what of it the strategy hides behind compute.

Volumes are the ring algorithms NCCL uses for large messages (NCCL's performance notes,
``nccl-tests/doc/PERFORMANCE.md``): an all-reduce of S bytes sends 2 (N-1)/N S per rank, an
all-gather or a reduce-scatter of S bytes (the whole tensor) (N-1)/N S. Time is bytes sent over
the link's per-direction bandwidth (the card's datasheet figure, see ``profiles/cards``, or
``--interconnect``); across nodes, the inter-node link. These are peak figures: NCCL's achieved
bus bandwidth is below them, so the communication time is a lower bound.

What each strategy overlaps, from its source:

- DDP all-reduces each bucket as soon as its gradients are ready during backward
  (``Reducer::mark_variable_ready``): hidden behind backward, except what is left when backward
  ends (at least the last bucket, the first layers' gradients).
- FSDP2 prefetches the next unit's all-gather during the current unit's compute (forward and
  backward) and reduce-scatters each unit's gradients during the next unit's backward: hidden,
  except the first unit's all-gather in each pass and any excess over the compute.
- ZeRO-1/2 reduce(-scatter) gradients during backward (``overlap_comm``) and all-gather the
  updated 16-bit weights after the optimizer step (not hidden); ZeRO-3 gathers like FSDP.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.schema import Parallelism, Strategy

INTER_NODE_GBS = 25.0
"""Default per-direction bandwidth between nodes: one 200 Gb/s InfiniBand HDR port (NVIDIA
ConnectX-6 datasheet: 200 Gb/s = 25 GB/s), unless ``--interconnect`` says otherwise."""


@dataclass(frozen=True)
class Collective:
    """One kind of collective of a step: ``count`` calls moving ``payload_bytes`` in all."""

    kind: str
    """"all-reduce", "all-gather" or "reduce-scatter"."""
    payload_bytes: int
    """Whole-tensor bytes per step (all buckets or units together)."""
    phase: str
    """"forward", "backward" or "optimizer": the compute it can hide behind."""
    exposed_bytes: int
    """Of ``payload_bytes``, what no compute can hide (the first unit gathered, the last bucket)."""

    def sent_bytes(self, ranks: int) -> float:
        """Bytes each rank sends for it with the ring algorithm."""
        if ranks <= 1:
            return 0.0
        factor = 2 * (ranks - 1) / ranks if self.kind == "all-reduce" else (ranks - 1) / ranks
        return factor * self.payload_bytes


@dataclass(frozen=True)
class ModelSizes:
    """Bytes the collectives move: the whole model's, in the dtypes the strategy communicates in."""

    gathered_bytes: int
    """All weights in the dtype they are gathered in (FSDP: ``param_dtype``; ZeRO: 16-bit)."""
    gradient_bytes: int
    """Trainable gradients in the dtype they are reduced in."""
    first_unit_bytes: int
    """The first unit gathered in a pass (FSDP/ZeRO-3), in the gather dtype."""
    last_bucket_bytes: int
    """What DDP still has to all-reduce when backward ends: its last bucket."""


def step_collectives(parallelism: Parallelism, sizes: ModelSizes, micro_batches: int = 1) -> list[Collective]:
    """The collectives of one optimizer step (``micro_batches`` accumulated micro-batches).

    Under accumulation DDP and ZeRO-1/2 communicate once per optimizer step (``no_sync``), FSDP
    and ZeRO-3 gather weights for every micro-batch.
    """
    strategy = parallelism.strategy
    if parallelism.world_size == 1:
        return []
    if strategy is Strategy.DDP:
        return [Collective("all-reduce", sizes.gradient_bytes, "backward", sizes.last_bucket_bytes)]
    if strategy in (Strategy.ZERO1, Strategy.ZERO2):
        return [
            Collective("reduce-scatter", sizes.gradient_bytes, "backward", sizes.last_bucket_bytes),
            Collective("all-gather", sizes.gathered_bytes, "optimizer", sizes.gathered_bytes),
        ]
    gathers = micro_batches * sizes.gathered_bytes
    first = micro_batches * sizes.first_unit_bytes
    return [
        Collective("all-gather", gathers, "forward", first),
        Collective("all-gather", gathers, "backward", first),
        Collective("reduce-scatter", sizes.gradient_bytes, "backward", 0),
    ]


@dataclass(frozen=True)
class CommunicationTime:
    """Seconds a step spends communicating, and what of it the step waits for."""

    collectives: tuple[Collective, ...]
    bandwidth_gbs: float
    """Per-direction link bandwidth used (the slowest link the collectives cross)."""
    link: str
    total_seconds: float
    exposed_seconds: float
    """Added to the compute time: communication no compute hides."""


def link_bandwidth(
    parallelism: Parallelism, intra_node_gbs: float, inter_node_gbs: float | None
) -> tuple[float, str]:
    """The bandwidth a ring over the job's ranks runs at: its slowest hop."""
    if parallelism.nodes == 1:
        return intra_node_gbs, "within a node"
    inter = inter_node_gbs if inter_node_gbs is not None else INTER_NODE_GBS
    if parallelism.strategy is Strategy.FSDP_HYBRID:
        # Sharding stays within a node; only the gradient all-reduce of the shards crosses nodes.
        return intra_node_gbs, "within a node (hybrid: the shards' all-reduce crosses nodes)"
    return min(intra_node_gbs, inter), "across nodes"


def communication_time(
    parallelism: Parallelism,
    sizes: ModelSizes,
    compute_seconds: dict[str, float],
    *,
    intra_node_gbs: float,
    inter_node_gbs: float | None = None,
    micro_batches: int = 1,
) -> CommunicationTime:
    """Communication of one optimizer step at the link's bandwidth, and what the strategy leaves
    exposed given ``compute_seconds`` per phase ("forward", "backward", "optimizer")."""
    collectives = step_collectives(parallelism, sizes, micro_batches)
    gbs, link = link_bandwidth(parallelism, intra_node_gbs, inter_node_gbs)
    ranks = parallelism.shard_size if parallelism.strategy is Strategy.FSDP_HYBRID else parallelism.world_size
    per_second = gbs * 1e9
    busy: dict[str, float] = {}
    floor: dict[str, float] = {}
    for collective in collectives:
        busy[collective.phase] = busy.get(collective.phase, 0.0) + collective.sent_bytes(ranks) / per_second
        floor[collective.phase] = floor.get(collective.phase, 0.0) + (
            collective.sent_bytes(ranks)
            * collective.exposed_bytes
            / max(collective.payload_bytes, 1)
            / per_second
        )
    total = sum(busy.values())
    if parallelism.strategy is Strategy.FSDP_HYBRID and parallelism.nodes > 1:
        # Each rank all-reduces its gradient shard with its peers on the other nodes, after backward.
        inter = inter_node_gbs if inter_node_gbs is not None else INTER_NODE_GBS
        shard = sizes.gradient_bytes / parallelism.gpus_per_node
        cross = 2 * (parallelism.nodes - 1) / parallelism.nodes * shard / (inter * 1e9)
        total += cross
        floor["optimizer"] = floor.get("optimizer", 0.0) + cross
        busy["optimizer"] = busy.get("optimizer", 0.0) + cross
    exposed = sum(
        max(busy[phase] - compute_seconds.get(phase, 0.0), floor[phase])
        if phase != "optimizer"
        else busy[phase]
        for phase in busy
    )
    return CommunicationTime(
        collectives=tuple(collectives),
        bandwidth_gbs=gbs,
        link=link,
        total_seconds=total,
        exposed_seconds=exposed,
    )
