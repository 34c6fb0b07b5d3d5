"""The embedded container runtime: ``Runtime`` (run, ps, stop, rm, exec, ...), ``launch_shim``.

Names are re-exported lazily (PEP 562) so that importing a small module such as
``runtime.errors`` does not load ctypes and the rest of the runtime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Container", "Runtime", "ShimHandle", "StateStore", "launch_shim"]

_EXPORTS = {
    "Container": "runtime.container",
    "Runtime": "runtime.runtime",
    "ShimHandle": "runtime.shim",
    "StateStore": "runtime.state",
    "launch_shim": "runtime.shim",
}

if TYPE_CHECKING:  # pragma: no cover
    from runtime.container import Container
    from runtime.runtime import Runtime
    from runtime.shim import ShimHandle, launch_shim
    from runtime.state import StateStore


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'runtime' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
