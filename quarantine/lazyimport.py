"""Importing a library on the mail path while modules it imports up front but
the call at hand never uses stand in for the real ones (loaded at their first
use), so a message does not pay their import cost; the stand-ins are gone
from sys.modules once the import is done."""

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any


def on_first_use(name: str, **ready: "Any") -> "Any":
    """A stand-in for module `name` whose attributes (but those in `ready`)
    come from the real module, imported when one is first asked for."""
    import types

    stand_in = types.ModuleType(name)
    stand_in.__dict__.update(ready)

    def attribute(attr: str) -> "Any":
        if sys.modules.get(name) is stand_in:
            raise AttributeError(attr)  # still standing in: no real module yet
        return getattr(__import__(name, fromlist=["_"]), attr)

    stand_in.__dict__["__getattr__"] = attribute
    return stand_in


def lazy_re() -> "Any":
    """A stand-in for `re` whose compile() returns patterns compiled at their
    first use: a library that compiles a dozen patterns on import (pyspf's
    IPv6 one alone costs milliseconds) then pays only for those it uses."""
    import re
    import types

    compile_now = re.compile

    class LazyPattern:
        """re.compile(pattern, flags), compiled when first used."""

        __slots__ = ("_args", "_compiled")

        def __init__(self, pattern: "Any", flags: int = 0) -> None:
            self._args = (pattern, flags)
            self._compiled: Any = None

        def __getattr__(self, name: str) -> "Any":
            if self._compiled is None:
                self._compiled = compile_now(*self._args)
            return getattr(self._compiled, name)

    stand_in = types.ModuleType("re")
    stand_in.__dict__.update(vars(re))
    stand_in.__dict__["compile"] = LazyPattern
    return stand_in


def import_with(
    name: str, stand_ins: "Mapping[str, Any]", replacing: "Mapping[str, Any] | None" = None
) -> "Any":
    """Import module `name` (if not yet imported) while each module named in
    `stand_ins` that is not imported yet is the object given (None: cannot
    be imported), and each in `replacing` is the object given even if it is;
    sys.modules is as it was afterwards. Returns the module."""
    if name in sys.modules:
        return sys.modules[name]
    placed = {key: value for key, value in stand_ins.items() if key not in sys.modules}
    placed.update(replacing or {})
    saved = {key: sys.modules[key] for key in placed if key in sys.modules}
    sys.modules.update(placed)
    try:
        __import__(name)
    finally:
        for key in placed:
            if key in saved:
                sys.modules[key] = saved[key]
            else:
                sys.modules.pop(key, None)
    return sys.modules[name]
