"""Package attributes imported on first use (PEP 562): `import flare_xlt.cli`, `flare-xlt --help` and a misspelt
option import no torch, transformers or peft; a command imports what it needs when it runs."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_attributes(package: str, sources: dict[str, tuple[str, ...]]) -> tuple[Callable[[str], Any], list[str]]:
    """A package's `__getattr__` and `__all__`: `sources` maps a submodule (relative, e.g. ".model") to the names it
    provides, and the first access of a name imports its submodule."""
    modules = {name: module for module, names in sources.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in modules:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(modules[name], package), name)

    return __getattr__, sorted(modules)
