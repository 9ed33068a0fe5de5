"""Importing the optional training libraries cheaply, and patching an attribute for a block."""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import torch


def import_bitsandbytes() -> ModuleType:
    """``import bitsandbytes``, with its import-time ``torch.compile`` calls deferred to first use.

    bitsandbytes wraps four CPU kernels in ``torch.compile`` at import, and creating a compiled
    function imports ``torch._inductor`` (~1 s, a tenth of the ``planner fit`` budget) although
    a fake trace never calls them. Each wrapper compiles on its first call instead, as
    ``torch.compile`` itself would; compile errors still reach bitsandbytes' own fallback there.
    peft imports bitsandbytes whenever it is installed, so this runs before any peft import.
    """
    if "bitsandbytes" in sys.modules:
        return sys.modules["bitsandbytes"]
    compile_now = torch.compile

    def compile_later(model: Any = None, **options: Any) -> Any:
        if model is None:
            return functools.partial(compile_later, **options)
        compiled: list[Callable[..., Any]] = []

        @functools.wraps(model)
        def first_call_compiles(*args: Any, **kwargs: Any) -> Any:
            if not compiled:
                compiled.append(compile_now(model, **options))
            return compiled[0](*args, **kwargs)

        return first_call_compiles

    with patched(torch, "compile", compile_later):
        import bitsandbytes
    return bitsandbytes


def import_peft() -> ModuleType:
    """``import peft`` after :func:`import_bitsandbytes` (peft imports bitsandbytes on its own)."""
    import_bitsandbytes()
    import peft

    return peft


@contextlib.contextmanager
def patched(obj: Any, name: str, value: object) -> Iterator[None]:
    """Temporarily replace ``obj.name`` (used to emulate CUDA's attention kernel choice)."""
    original = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, original)


def entered(mode: Any | None) -> contextlib.AbstractContextManager[Any]:
    """``mode`` as a context manager, or one that does nothing when there is none."""
    return mode if mode is not None else contextlib.nullcontext()
