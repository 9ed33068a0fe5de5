"""Build the real training objects of a config: transformers model, peft adapters, 4-bit base, optimizer.

The same builder serves the fake trace (no memory, no weights), real runs on CPU and the
executor's trials (fresh or pretrained weights), so what the estimator traces is what a Trainer
runs: the model class named in the config, peft's LoRA, bitsandbytes' NF4 layout with double
quantization, and the optimizer classes Trainer picks for each ``optim`` name.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from planner.errors import ConfigError
from planner.schema import Attention, Method, Precision, TrainingConfig
from planner.step._imports import entered, import_bitsandbytes, import_peft
from planner.step._lora import add_lora
from planner.step._optimizers import make_optimizer

_HALF = {Precision.FP16: torch.float16, Precision.BF16: torch.bfloat16, Precision.PURE_BF16: torch.bfloat16}


@dataclass
class TrainingSetup:
    """A model ready to train, its optimizer, and how to make a batch and run a forward."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    task: str
    """"causal-lm", "masked-lm" or "sequence-classification": decides the labels."""
    vocab_size: int
    autocast_dtype: torch.dtype | None
    loss_head: nn.Module | None
    """The output projection; from its forward on, allocations are logits/loss temporaries."""
    backward: Callable[[torch.Tensor], Any] | None = None
    """How the step runs backward from the loss: ``loss.backward()`` (None), or an engine's own
    (DeepSpeed's ``engine.backward``, which reduces gradients after autograd)."""
    step_context: Callable[[], contextlib.AbstractContextManager[Any]] | None = None
    """A context each step of an engine runs in (a fake world's answers to DeepSpeed), or None."""

    def make_batch(self, micro_batch: int, seq_len: int) -> dict[str, torch.Tensor]:
        """One micro-batch as a Trainer's collator gives it: ``input_ids``, ``attention_mask``, ``labels``.

        ``DataCollatorForLanguageModeling`` and ``DataCollatorWithPadding`` pad the rows to one
        length and send the mask along; language-modelling labels are the ids with -100 at the
        padding. Every row here ends in one pad position, so the mask always has a zero, as a
        padded batch's has: transformers then builds the 4-D attention mask a real padded step
        builds (an all-ones mask it would drop, but under fake tensors it cannot look). A
        classifier's labels are class 0, made with ``torch.tensor`` so that a fake trace knows
        their values (see ``_trace._labels_are_known``): every row labelled, as in a real dataset.
        """
        ids = torch.randint(0, self.vocab_size, (micro_batch, seq_len))
        mask = torch.ones(micro_batch, seq_len, dtype=torch.long)
        if seq_len > 1:
            mask[:, -1] = 0
        if self.task == "sequence-classification":
            labels = torch.tensor([0] * micro_batch)
        else:
            labels = ids.masked_fill(mask == 0, -100)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cpu", dtype=self.autocast_dtype)

    def run_backward(self, loss: torch.Tensor) -> None:
        if self.backward is None:
            loss.backward()
        else:
            self.backward(loss)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]


def base_weight_dtype(config: TrainingConfig) -> torch.dtype:
    """dtype the (non-quantized) base weights are loaded in.

    Full fine-tuning with mixed precision keeps fp32 master weights (Trainer's ``bf16=True`` on a
    model loaded in fp32). A frozen LoRA/QLoRA base needs no master copy and is loaded in the half
    dtype, as every LoRA recipe does (``dtype=torch.bfloat16``).
    """
    if config.precision is Precision.PURE_BF16:
        return torch.bfloat16
    if config.precision is Precision.FP32 or config.method is Method.FULL:
        return torch.float32
    return _HALF[config.precision]


def autocast_dtype(config: TrainingConfig) -> torch.dtype | None:
    """Trainer's ``fp16``/``bf16`` flags run the forward under autocast; fp32 and pure-bf16 do not."""
    return _HALF[config.precision] if config.precision in (Precision.FP16, Precision.BF16) else None


def task_of(model_class_name: str) -> str:
    if model_class_name.endswith("ForSequenceClassification"):
        return "sequence-classification"
    if model_class_name.endswith(("ForMaskedLM", "ForPreTraining")):
        return "masked-lm"
    return "causal-lm"


def model_class(hf_config: Any) -> Any:
    """The transformers class the config names (``architectures``), else its causal-LM class."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names = [
        name.replace("ForPreTraining", "ForMaskedLM")
        for name in getattr(hf_config, "architectures", None) or []
    ]
    names.append(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(hf_config.model_type, ""))
    for name in names:
        if hasattr(transformers, name):
            return getattr(transformers, name)
    raise ConfigError(
        "model", f"no transformers class for model_type '{hf_config.model_type}'", "name a supported model"
    )


def build_model(
    hf_config: Any, config: TrainingConfig, *, fake_mode: Any | None = None, pretrained: str | None = None
) -> nn.Module:
    """The model ``config`` trains, in train mode, on every init path the product uses.

    - ``fake_mode`` set: built on meta, then materialised as fake CPU tensors (nothing allocated,
      no weight read): what the estimator traces.
    - neither: fresh weights from the config, real tensors: the profiler's and ``init: random``.
    - ``pretrained``: transformers' ``from_pretrained`` of that reference (QLoRA through
      ``BitsAndBytesConfig`` with the same NF4 double-quantised layout): ``init: pretrained``.

    Past the base model every path runs the same code: peft's ``prepare_model_for_kbit_training``
    for QLoRA, LoRA adapters (fp32 over a half base, bf16 for pure bf16), and checkpointing.
    """
    cls = model_class(hf_config)
    weights = base_weight_dtype(config)
    compute = _HALF.get(config.precision, torch.float32)
    attention = _attn_implementation(config, traced=fake_mode is not None)
    # Under fake mode everything is built on meta (no init cost, and peft/bitsandbytes run their
    # real code on meta tensors), then materialised as fake CPU tensors in one ``to_empty``.
    with torch.device("meta") if fake_mode is not None else contextlib.nullcontext():
        if pretrained is None:
            model = cls._from_config(hf_config, dtype=weights, attn_implementation=attention)
            if config.method is Method.QLORA:
                _quantize_to_nf4(model, compute)
        else:
            model = cls.from_pretrained(
                pretrained, attn_implementation=attention, **_pretrained_arguments(config, weights, compute)
            )
        model.train()
        if config.method is Method.QLORA:
            model = import_peft().prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=config.gradient_checkpointing
            )
        if config.method in (Method.LORA, Method.QLORA):
            model = add_lora(model, config, task_of(cls.__name__))
        if config.stack.kbit_bf16_casting:
            _cast_peft_modules_to_bf16(model)
        if config.gradient_checkpointing:
            # Trainer calls this on the (peft-wrapped) model; transformers defaults to non-reentrant.
            model.activation_checkpointing_enable()
    if fake_mode is not None:
        with fake_mode:
            quant_states = {
                name: module.weight.quant_state
                for name, module in model.named_modules()
                if hasattr(module.weight if isinstance(module, nn.Linear) else None, "quant_state")
            }
            # ``to_empty(device="cpu")``, but each tensor made from its layout alone: under fake
            # mode, ``empty_like`` of a meta tensor first converts it to a fake one, which costs
            # several times more.
            model = model._apply(_fake_cpu_twin)
            # Moving meta -> fake makes a new Parameter per module, which unties shared weights.
            model.tie_weights()
            _materialise_quant_states(model, quant_states)
    return model


# Module names TRL casts back to bf16 (trl 0.13.0 trl/trainer/utils.py, peft_module_casting_to_bf16).
_TRL_BF16_MODULES = ("lm_head", "embed_tokens", "wte", "wpe")


def _cast_peft_modules_to_bf16(model: nn.Module) -> None:
    """TRL's ``peft_module_casting_to_bf16`` (``TargetStack.kbit_bf16_casting``), as written in
    trl 0.13.0: norms (a ``LayerNorm``, or "norm" in the name) to fp32; embeddings and head (by
    name) back to bf16 where ``prepare_model_for_kbit_training`` left their weight in fp32."""
    for name, module in model.named_modules():
        if isinstance(module, nn.LayerNorm) or "norm" in name:
            module.to(torch.float32)
        elif any(part in name for part in _TRL_BF16_MODULES):
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.Tensor) and weight.dtype == torch.float32:
                module.to(torch.bfloat16)


def _attn_implementation(config: TrainingConfig, *, traced: bool) -> str | None:
    """transformers' ``attn_implementation`` for ``config``: None (its default, SDPA where the
    model has it) for sdpa, the name otherwise.

    Always passed, None included: ``_from_config`` writes it onto the (shared) model config, so
    leaving it out would keep whatever an earlier build set. A trace runs flash-attention-2 as SDPA
    with CUDA's flash kernel emulated (``CudaTarget``): the flash-attn package has no CPU kernel,
    and both keep the output and a log-sum-exp for backward.
    """
    if config.attention is Attention.SDPA or (traced and config.attention is Attention.FLASH_ATTENTION_2):
        return None
    return config.attention.value


def _pretrained_arguments(
    config: TrainingConfig, weights: torch.dtype, compute: torch.dtype
) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments: the base dtype, and for QLoRA the NF4 layout that
    :func:`_quantize_to_nf4` builds (blocksize 64, double-quantised absmax)."""
    arguments: dict[str, Any] = {"dtype": weights}
    if config.method is Method.QLORA:
        from transformers import BitsAndBytesConfig

        import_bitsandbytes()
        arguments["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
        )
    return arguments


def build_training_setup(
    hf_config: Any,
    config: TrainingConfig,
    *,
    fake_mode: Any | None,
    cuda_optimizer_layout: bool,
    prepare: Callable[[nn.Module], nn.Module] | None = None,
) -> TrainingSetup:
    """Build model, adapters and optimizer for ``config``; with ``fake_mode`` nothing is allocated.

    ``cuda_optimizer_layout``: the (CPU) parameters stand for CUDA ones, so the optimizer is built
    as on CUDA (see :func:`~planner.step._optimizers.make_optimizer`'s ``as_on_cuda``). ``prepare``
    turns the built model into one rank of a data-parallel job (``planner.distributed.rank_preparer``)
    before the optimizer is built over its (then sharded) parameters.
    """
    model = build_model(hf_config, config, fake_mode=fake_mode)
    task = task_of(model_class(hf_config).__name__)
    loss_head = model.get_output_embeddings() if task != "sequence-classification" else None  # type: ignore[operator]
    if prepare is not None:
        with entered(fake_mode):
            model = prepare(model)
        # Parameters replaced by shards die in reference cycles; collect them now, not mid-trace.
        gc.collect()
    params = [p for p in model.parameters() if p.requires_grad]
    # Optimizers are built outside fake mode: bitsandbytes computes its quantization maps with
    # data-dependent Python at construction. The maps are tiny real tensors; the state is fake.
    optimizer = make_optimizer(
        config.optimizer, params, as_on_cuda=cuda_optimizer_layout, foreach=config.stack.optimizer_foreach
    )
    return TrainingSetup(
        model=model,
        optimizer=optimizer,
        task=task,
        vocab_size=int(hf_config.vocab_size),
        autocast_dtype=autocast_dtype(config),
        loss_head=loss_head,
    )


def _quantize_to_nf4(model: nn.Module, compute_dtype: torch.dtype) -> None:
    """Swap every linear layer but the output head for a bitsandbytes NF4 ``Linear4bit``.

    The packed weight and its quant state come from ``bitsandbytes.functional.quantize_4bit`` itself
    (blocksize 64, double-quantized absmax: ``BitsAndBytesConfig(bnb_4bit_use_double_quant=True)``),
    so the layout is the real one; under fake mode it is computed without touching data.
    """
    bnb = import_bitsandbytes()
    import bitsandbytes.functional as bnbf

    with torch.device("cpu"):
        # bitsandbytes computes (and caches) its dynamic map from data on first use; do that on
        # the CPU so that quantizing meta weights later only copies it.
        bnbf.name2qmap.setdefault("dynamic", bnbf.create_dynamic_map())
    skip = {id(model.get_output_embeddings())}  # type: ignore[operator]
    for head in ("classifier", "score"):
        if isinstance(getattr(model, head, None), nn.Module):
            skip.update(id(m) for m in getattr(model, head).modules())
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear) or id(child) in skip:
                continue
            with torch.device("meta"):
                quantized = bnb.nn.Linear4bit(
                    child.in_features,
                    child.out_features,
                    bias=child.bias is not None,
                    compute_dtype=compute_dtype,
                    quant_type="nf4",
                    compress_statistics=True,
                )
            packed, state = bnbf.quantize_4bit(
                child.weight.detach().to(compute_dtype),
                blocksize=64,
                compress_statistics=True,
                quant_type="nf4",
            )
            weight = nn.Parameter(packed, requires_grad=False)
            # What peft and Linear4bit read off a bitsandbytes Params4bit.
            weight.quant_state = state  # type: ignore[attr-defined]
            weight.quant_type = "nf4"  # type: ignore[attr-defined]
            weight.compress_statistics = True  # type: ignore[attr-defined]
            weight.bnb_quantized = True  # type: ignore[attr-defined]
            quantized.weight = weight
            quantized.bias = child.bias
            setattr(parent, child_name, quantized)
    model.is_loaded_in_4bit = True  # type: ignore[assignment]


def _fake_cpu_twin(tensor: torch.Tensor) -> torch.Tensor:
    """An uninitialised CPU tensor laid out like ``tensor`` (fake under fake mode)."""
    return torch.empty_strided(tensor.size(), tensor.stride(), dtype=tensor.dtype, device="cpu")


def _materialise_quant_states(model: nn.Module, states: dict[str, Any]) -> None:
    """Give 4-bit weights back their quant state, as fake CPU tensors, after ``to_empty``.

    ``to_empty`` replaces each parameter and knows nothing of the quant state, which bitsandbytes
    keeps as a plain attribute of the weight.
    """
    modules = dict(model.named_modules())
    for name, state in states.items():
        modules[name].weight.quant_state = state
        while state is not None:
            for attr in ("absmax", "code", "offset"):
                value = getattr(state, attr)
                if isinstance(value, torch.Tensor):
                    setattr(state, attr, _fake_cpu_twin(value))
            state = state.state2
