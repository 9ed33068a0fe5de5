"""Memory answers for one config on one card: estimates at any micro-batch and the largest that fits.

The fit of :mod:`planner.estimator._linear` predicts; full-depth traces confirm (and correct) the
predicted maximum. What only CUDA adds (context, workspace, fragmentation) comes from
:mod:`planner.estimator._cuda`.
"""

from __future__ import annotations

import math

from planner.allocator import AllocatorConfig
from planner.distributed import check_traceable, nccl_memory
from planner.estimator._cuda import CudaOverhead, default_overhead
from planner.estimator._helper import Helper
from planner.estimator._linear import MAX_MICRO_BATCH, TRACE_KEYS, LinearPeak
from planner.estimator._replay import ReplayedPeak, replay_step
from planner.estimator._traces import TraceCache, full_trace_task, shared_cache
from planner.models import load_model_config
from planner.schema import Card, MemoryBreakdown, MemoryEstimate, TrainingConfig
from planner.step import StepTrace, check_card_supports, cuda_target

CONFIRM_ROUNDS = 4
REPLAYED_ERROR = (
    "allocated and reserved: the traced allocations replayed through PyTorch's caching-allocator "
    "rules (not yet validated on a GPU); device adds the CUDA context ({context})"
)
"""Full-depth traces the confirmation of a predicted max may take."""
PER_RANK_INCLUDES = (
    "per rank of the job, traced on its fullest rank (rank 0; the last under ZeRO-2) of a fake "
    "process group: the rank's shard of weights, "
    "gradients and optimizer state (FSDP), its all-gathered layers with the next one prefetched, "
    "DDP's gradient buckets, DeepSpeed ZeRO's engine run as is (flat buffers, partitions, reduce "
    "buckets); NCCL's buffers (outside the caching allocator, in device-used only): {nccl}"
)

INCLUDES = [
    "weights (with 4-bit quant state), gradients, optimizer state",
    "activations saved for backward and temporaries (logits, fp32 loss upcast) at the step's peak",
    "a padded collator batch (input ids, attention mask the model expands, labels -100 at padding)",
    "the optimizer step as the optim runs on the device (foreach AdamW's parameter-sized intermediate)",
    "CUDA caching-allocator 512-byte block rounding, cuBLAS workspace",
    "CUDA context; reserved memory: fully traced rows replay the step's allocations through the "
    "caching-allocator model (segments, splitting, caching), linear-fit rows add a fragmentation margin",
    "paged optimizer state (bitsandbytes paged_*): CUDA managed memory outside the caching allocator, "
    "not in allocated/reserved; in device-used as far as the device has room (the driver pages the "
    "rest to host RAM, slower), never an OOM by itself",
]


class Estimator:
    """Memory answers for one config on one card; its traces are kept in (and shared through) ``cache``."""

    def __init__(
        self,
        config: TrainingConfig,
        card: Card,
        overhead: CudaOverhead | None = None,
        *,
        cache: TraceCache | None = None,
        alloc_conf: AllocatorConfig | None = None,
    ) -> None:
        check_card_supports(config, card)
        check_traceable(config)
        self.config = config
        self.card = card
        self.hf_config = load_model_config(config.model)
        loading = config.stack.cuda_module_loading
        self.overhead = overhead or default_overhead(card, loading.value if loading is not None else None)
        self.cuda = cuda_target(card, config, self.hf_config)
        self.nccl = nccl_memory(config.parallelism, card)
        """NCCL's device memory on a rank of a multi-GPU job (0 on one GPU), outside the allocator."""
        self.traces = (cache or shared_cache()).get(config, self.cuda)
        self.alloc_conf = alloc_conf if alloc_conf is not None else AllocatorConfig.from_env()
        """The caching allocator's settings the replay follows (``PYTORCH_CUDA_ALLOC_CONF`` by default)."""
        self._replayed: dict[int, ReplayedPeak] = {}
        self.helper: Helper | None = None
        """A helper process that traces full-depth steps for this estimator, while one runs."""
        self._pending: dict[int, int] = {}
        """micro-batch -> helper task tracing it at full depth."""

    # -- traces ---------------------------------------------------------------------------------
    def full_trace(self, micro_batch: int) -> StepTrace:
        if micro_batch not in self.traces.full:
            if self.helper is not None:
                self.prefetch(micro_batch)
                self.traces.full[micro_batch] = self.helper.result(self._pending.pop(micro_batch))
            else:
                self.traces.full_trace(micro_batch)
        return self.traces.full[micro_batch]

    def prefetch(self, micro_batch: int) -> None:
        """Have the helper start the full-depth trace at ``micro_batch`` (no-op without one)."""
        if self.helper is None or micro_batch in self.traces.full or micro_batch in self._pending:
            return
        self._pending[micro_batch] = self.helper.submit(full_trace_task, self.config, self.cuda, micro_batch)

    @property
    def linear(self) -> LinearPeak:
        return self.traces.linear

    def replayed(self, micro_batch: int) -> ReplayedPeak | None:
        """The full-depth step at ``micro_batch`` replayed through the caching-allocator model
        against the card's memory less the context; None on the host (no CUDA allocator)."""
        if micro_batch not in self._replayed:
            stream = self.full_trace(micro_batch).allocations
            if stream is None:
                return None
            self._replayed[micro_batch] = replay_step(
                stream,
                workspace_bytes=self.overhead.workspace_bytes,
                capacity=self.card.available_bytes - self._outside_allocator_bytes,
                config=self.alloc_conf,
                empty_cache_every_step=self.config.stack.empty_cache_every_step,
            )
        return self._replayed[micro_batch]

    # -- answers --------------------------------------------------------------------------------
    @property
    def _outside_allocator_bytes(self) -> int:
        """Device memory neither PyTorch's allocator nor the step's tensors hold: context and NCCL."""
        return self.overhead.context_bytes + self.nccl.bytes

    @property
    def allocated_limit(self) -> int:
        return self.overhead.allocated_limit(self.card.available_bytes - self.nccl.bytes)

    @property
    def _tensor_limit(self) -> int:
        """Most live tensor bytes the step may peak at: the allocated limit less cuBLAS workspace,
        plus the paged optimizer state the trace counts but the allocator never holds."""
        return self.allocated_limit - self.overhead.workspace_bytes + self.paged_bytes()

    def paged_bytes(self, step: StepTrace | None = None) -> int:
        """Optimizer state a CUDA run keeps in managed (paged) memory, outside the caching allocator:
        the traced ``step``'s own blocks, else the full-depth figure of the built setups."""
        stream = step.allocations if step is not None else None
        if stream is not None:
            return sum(
                delta for block, delta in stream.setup if block in stream.outside_allocator and delta > 0
            )
        return round(self.traces.paged_bytes()) if self.cuda is not None else 0

    def _allocated(self, tensor_bytes: float) -> int:
        return math.ceil(tensor_bytes) + self.overhead.workspace_bytes

    def estimate(self, micro_batch: int, *, trace: bool = True) -> MemoryEstimate:
        """The estimate at ``micro_batch``: traced at full depth, or from the linear fit (at
        micro-batch 1, from the probes at 1 alone when the fit is not taken: a config that
        cannot fit says what it needs without the probes at 2)."""
        if trace:
            step = self.full_trace(micro_batch)
            values = {key: float(getattr(step, key)) for key in TRACE_KEYS}
        else:
            step = None
            line = self.traces.line_at_one() if micro_batch == 1 else self.linear
            values = {key: line.at(micro_batch, key) for key in TRACE_KEYS}
        paged = self.paged_bytes(step)
        replayed = self.replayed(micro_batch) if trace else None
        if replayed is not None:
            allocated, reserved = replayed.allocated, replayed.reserved
            expected_error = REPLAYED_ERROR.format(context=self.overhead.context_source)
        else:
            allocated = self._allocated(values["peak"] - paged)
            reserved = self.overhead.reserved(allocated)
            expected_error = self.overhead.expected_error
        # Managed memory stays on the device while it has room; past that the driver migrates
        # pages to host RAM instead of failing (CUDA Programming Guide, "Unified Memory":
        # oversubscription on Pascal and newer), so it only fills what the allocator leaves.
        allocator_device = reserved + self.overhead.context_bytes
        resident = allocator_device + self.nccl.bytes
        paged_on_device = min(paged, max(0, self.card.available_bytes - resident))
        device = resident + paged_on_device
        owners = ("weights", "gradients", "optimizer_state", "activations", "temporaries")
        parts = {name: max(0, round(values[name])) for name in owners}
        # Rounding of fitted parts must not break "the breakdown sums to the peak".
        parts["temporaries"] += max(0, math.ceil(values["peak"]) - sum(parts.values()))
        # The paged state is live through the whole step, so it is in the peak's optimizer state.
        parts["optimizer_state"] = max(0, parts["optimizer_state"] - paged)
        cuda_context = self.overhead.context_bytes + self.overhead.workspace_bytes
        breakdown = MemoryBreakdown(
            **parts,
            cuda_context=cuda_context,
            # Whatever the allocator holds beyond live tensors and the workspace: block and
            # segment rounding, and cached free blocks (reserved - allocated).
            allocator_overhead=max(0, allocator_device - cuda_context - sum(parts.values())),
            paged_on_device=paged_on_device,
            collective_buffers=self.nccl.bytes,
        )
        return MemoryEstimate(
            config=self.config.with_changes(micro_batch=micro_batch),
            card=self.card.name,
            micro_batch=micro_batch,
            peak_allocated_bytes=allocated,
            peak_reserved_bytes=reserved,
            peak_bytes=device,
            available_bytes=self.card.available_bytes,
            breakdown=breakdown,
            includes=INCLUDES
            if self.config.parallelism.single_gpu
            else [*INCLUDES, PER_RANK_INCLUDES.format(nccl=self.nccl.basis)],
            expected_error=expected_error,
            traced=trace,
            segments=replayed.segments if replayed is not None else None,
            paged_bytes=paged,
            collective_buffers_basis=None if self.config.parallelism.single_gpu else self.nccl.basis,
        )

    def trainable_bytes(self) -> int:
        """Bytes of the weights that train (all weights, or the adapters) at full depth."""
        return round(self.traces.trainable_bytes())

    def max_micro_batch(self, *, confirm: bool = True) -> int:
        """The largest micro-batch that fits: linear prediction, then full-depth traces to confirm.

        Each trace moves every window's line through it (slopes kept) for the next prediction,
        which stays between the largest micro-batch traced to fit and the smallest traced not to.
        On a CUDA card "fits" is the allocator replay's verdict (see :meth:`replayed`) and the
        answer is a size that fits with the next one failing; on the host, live bytes decide.
        """
        limit = self._tensor_limit
        predicted = self._predicted_max(limit)
        if not confirm:
            return predicted
        fits, fails = 0, MAX_MICRO_BATCH + 1
        candidate = max(predicted, 1)
        for _ in range(CONFIRM_ROUNDS):
            step = self.full_trace(candidate)
            replayed = self.replayed(candidate)
            if replayed is not None:
                # On CUDA the allocator's replay decides; the live-bytes limit for the next
                # prediction takes the allocator's overhead at this micro-batch as it was.
                # Paged optimizer state is in the trace's peak but not in what the allocator reserves.
                paged = self.paged_bytes(step)
                limit = paged + math.floor(
                    (self.card.available_bytes - self._outside_allocator_bytes)
                    * (step.peak - paged)
                    / replayed.reserved
                )
            if replayed.fits if replayed is not None else step.peak <= limit:
                fits = candidate
            else:
                fails = candidate
            predicted = self.linear.corrected(step, candidate).max_micro_batch(limit)
            # Live bytes grow with the micro-batch, so a corrected line that stops at a size
            # known to fit is the answer. What the allocator reserves need not grow with it
            # (segments round differently): there, the size above must be seen to fail.
            if fails == fits + 1 or (fits and predicted <= fits and replayed is None):
                return fits
            candidate = min(max(predicted, fits + 1), fails - 1)
        return fits

    def _predicted_max(self, limit: int) -> int:
        """The linear fit's max micro-batch, stopping early at a stage that already says 0.

        Bytes resident between steps are a floor under the peak, and the fit's peak at micro-batch
        1 is the depth extrapolation of the probes at micro-batch 1, so a config that cannot fit
        is known without the micro-batch-2 probes (or without any trace). The margin of one byte
        keeps the early answer on the same side of the limit as the fit's own arithmetic.
        """
        if self.traces.resident_bytes() > limit + 1 or self.traces.peak_at_one() > limit + 1:
            return 0
        return self.linear.max_micro_batch(limit)
