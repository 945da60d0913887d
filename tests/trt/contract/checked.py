"""Proxies that hold the project to the real TensorRT Python API.

Each proxy stands for an instance of a real class of the ``tensorrt_bindings`` module (imported from the
registry's binding wheel over stub libraries, so the classes, enums and pybind11 signatures are the real ones
of that TensorRT version) and forwards to a simulated object. Reading an attribute the real class lacks,
setting a read-only property, or calling a method with arguments that none of its pybind11 overloads (as the
docstrings list them) accepts is a contract violation: recorded, and raised as ContractViolation. Every name
used is recorded too, so the test can print and check the API surface the project depends on.
"""

from __future__ import annotations

import dataclasses
import os
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any

USED: set[str] = set()
VIOLATIONS: list[str] = []
_LOCK = threading.Lock()
_REAL: Any = None  # the real tensorrt_bindings module


class ContractViolation(AssertionError):
    pass


def set_real_module(module: Any) -> None:
    global _REAL
    _REAL = module


def violation(message: str) -> ContractViolation:
    with _LOCK:
        VIOLATIONS.append(message)
    return ContractViolation(message)


def use(name: str) -> None:
    with _LOCK:
        USED.add(name)


@dataclasses.dataclass(frozen=True)
class Param:
    name: str
    annotation: str
    has_default: bool


def _split_top(text: str) -> list[str]:
    parts, depth, current = [], 0, []
    for ch in text:
        if ch in "([{<":
            depth += 1
        elif ch in ")]}>":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if "".join(current).strip():
        parts.append("".join(current))
    return [p.strip() for p in parts]


def overloads(func: Any, name: str) -> list[list[Param]]:
    """The parameter lists (``self`` dropped) of each pybind11 overload of ``func``, from its docstring."""
    doc = getattr(func, "__doc__", None) or ""
    found = []
    for line in doc.splitlines():
        match = re.match(rf"^\s*(?:\d+\.\s+)?{re.escape(name)}\((.*)\)\s*->", line)
        if match is None or "*args" in match.group(1):
            continue
        params = []
        for part in _split_top(match.group(1)):
            head, _, default = part.partition("=")
            pname, _, annotation = head.partition(":")
            params.append(Param(pname.strip(), annotation.strip(), bool(default.strip())))
        found.append(params[1:] if params and params[0].name == "self" else params)
    return found


def _real_class(annotation: str) -> Any:
    match = re.fullmatch(r"tensorrt_bindings\.tensorrt\.(\w+)", annotation)
    return getattr(_REAL, match.group(1), None) if match else None


def accepts(annotation: str, value: Any) -> bool:
    """Whether pybind11 would convert ``value`` to ``annotation`` (the cases the bindings' signatures use)."""
    if annotation in ("typing.SupportsInt", "int"):
        return not isinstance(value, float) and hasattr(value, "__index__")
    if annotation in ("typing.SupportsFloat", "float"):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation == "bool":
        return isinstance(value, bool)
    if annotation == "str":
        return isinstance(value, str)
    if annotation in ("os.PathLike", "os.PathLike | str", "str | os.PathLike"):
        return isinstance(value, str | os.PathLike)
    if annotation in ("typing_extensions.Buffer", "collections.abc.Buffer", "typing.Buffer", "buffer"):
        try:
            memoryview(value)
        except TypeError:
            return False
        return True
    if annotation in ("tuple", "list"):
        return type(value).__name__ == annotation or isinstance(value, tuple if annotation == "tuple" else list)
    if annotation == "tensorrt_bindings.tensorrt.Dims":
        return isinstance(value, tuple | list) and all(accepts("int", v) for v in value)
    if annotation in ("object", "typing.Any", "capsule"):
        return True
    cls = _real_class(annotation)
    if cls is None:
        raise violation(f"the contract test cannot check arguments of type {annotation!r}: extend accepts()")
    if isinstance(value, Checked):
        return issubclass(object.__getattribute__(value, "_real_cls"), cls)
    return isinstance(value, cls)


def check_call(cls: Any, name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
    where = f"{cls.__name__}.{name}"
    candidates = overloads(getattr(cls, name), name)
    if not candidates:
        raise violation(f"{where}: no signature in its docstring to check the call against")
    reasons = []
    for params in candidates:
        reason = _mismatch(params, args, kwargs)
        if reason is None:
            return
        reasons.append(reason)
    raise violation(f"{where}{_show(args, kwargs)} matches none of its overloads: " + "; ".join(reasons))


def _mismatch(params: list[Param], args: Sequence[Any], kwargs: dict[str, Any]) -> str | None:
    if len(args) > len(params):
        return f"{len(args)} positional arguments for {len(params)} parameters"
    bound = dict(zip((p.name for p in params), args, strict=False))
    for key, value in kwargs.items():
        if key in bound or key not in {p.name for p in params}:
            return f"unexpected keyword {key!r}"
        bound[key] = value
    for p in params:
        if p.name not in bound:
            if not p.has_default:
                return f"missing {p.name!r}"
            continue
        if not accepts(p.annotation, bound[p.name]):
            return f"{p.name!r} is {type(bound[p.name]).__name__}, not {p.annotation}"
    return None


def _show(args: Sequence[Any], kwargs: dict[str, Any]) -> str:
    shown = [type(a).__name__ for a in args] + [f"{k}={type(v).__name__}" for k, v in kwargs.items()]
    return "(" + ", ".join(shown) + ")"


def real_attribute(cls: Any, name: str) -> Any:
    use(f"{cls.__name__}.{name}")
    if not hasattr(cls, name):
        raise violation(f"{cls.__name__} has no attribute {name!r} in TensorRT {_REAL.__version__}")
    return getattr(cls, name)


class Checked:
    """An instance of the real class ``real_cls`` as the project sees it, forwarding to ``sim``."""

    def __init__(self, real_cls: Any, sim: Any) -> None:
        object.__setattr__(self, "_real_cls", real_cls)
        object.__setattr__(self, "_sim", sim)

    def __getattr__(self, name: str) -> Any:
        cls, sim = object.__getattribute__(self, "_real_cls"), object.__getattribute__(self, "_sim")
        attr = real_attribute(cls, name)
        if isinstance(attr, property):
            return getattr(sim, name)
        method = getattr(sim, name, None)
        if method is None:
            raise violation(f"the simulator lacks {cls.__name__}.{name} (real API, not simulated yet)")

        def call(*args: Any, **kwargs: Any) -> Any:
            check_call(cls, name, args, kwargs)
            return method(*args, **kwargs)

        return call

    def __setattr__(self, name: str, value: Any) -> None:
        cls, sim = object.__getattribute__(self, "_real_cls"), object.__getattribute__(self, "_sim")
        attr = real_attribute(cls, name)
        if not isinstance(attr, property) or attr.fset is None:
            raise violation(f"{cls.__name__}.{name} cannot be set")
        setattr(sim, name, value)

    def __repr__(self) -> str:
        return f"<checked {object.__getattribute__(self, '_real_cls').__name__}>"


def checked_constructor(real_cls: Any, make: Callable[..., Any]) -> Callable[..., Checked]:
    """A stand-in for ``real_cls(...)``: the arguments checked against its __init__ overloads."""

    def construct(*args: Any, **kwargs: Any) -> Checked:
        use(f"{real_cls.__name__}")
        check_call(real_cls, "__init__", args, kwargs)
        return Checked(real_cls, make(*args, **kwargs))

    construct.__name__ = real_cls.__name__
    return construct


class HostMemory(bytes):
    """IHostMemory: a buffer (as the real one is) whose named attributes are checked against the real class."""

    def __getattribute__(self, name: str) -> Any:
        if not name.startswith("__"):
            real_attribute(_REAL.IHostMemory, name)
            if name == "nbytes":
                return len(self)
        return super().__getattribute__(name)
