"""Name → component lookup for datasets, partitions, models, attacks and defenses.

Every pluggable piece of byzbench is a *component*: a class with a ``name`` and a pydantic
``Params`` model (unknown keys forbidden) that declares its parameters with defaults and
descriptions. A registry maps names to those classes. Names of the form
``package.module:ClassName`` load a user's class from an importable module, and installed
packages may register names through the entry-point groups ``byzbench.<kind>s``.

A component is *written* (in a grid file, a pipeline's layers, a stored configuration) as a
name or a mapping ``{name: …, label: …, <params>}``, or in the resolved form
``{name: …, params: {…}, label: …}``; :func:`split_spec` reads every one of those forms.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator, Mapping
from importlib.metadata import entry_points
from typing import Any, ClassVar, Generic, NamedTuple, TypeVar

from pydantic import BaseModel, ConfigDict


class Params(BaseModel):
    """Base of every component's parameter model: unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Component:
    """A registered, parameterised piece of byzbench.

    Subclasses set ``Params`` to a :class:`Params` subclass; the registry fills ``name``.
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type[Params]] = Params

    def __init__(self, params: Params | None = None) -> None:
        self.params = params if params is not None else self.Params()


class UnknownComponentError(LookupError):
    """A name that no registry entry, plugin path or entry point resolves."""

    def __init__(self, kind: str, name: str, allowed: list[str], suggestion: str | None):
        self.kind, self.name, self.allowed, self.suggestion = kind, name, allowed, suggestion
        hint = f"; did you mean '{suggestion}'?" if suggestion else ""
        super().__init__(f"unknown {kind} '{name}'{hint} (allowed: {', '.join(allowed)})")


class PluginError(TypeError):
    """A plugin path that imports but does not give a usable component class."""


class Spec(NamedTuple):
    """A component as written: its name, its parameters, and the label shown in reports."""

    name: str
    params: dict[str, Any]
    label: str | None = None


class SpecError(ValueError):
    """A malformed component spec. ``part`` is the key at fault (``name``, ``label``) or
    ``""`` for the spec as a whole; ``reason`` the message without the offending ``value``."""

    def __init__(self, reason: str, value: Any, part: str = "") -> None:
        self.reason, self.value, self.part = reason, value, part
        where = f"{part}: " if part else ""
        super().__init__(f"{where}{reason} (got {value!r})")


def split_spec(spec: Any, kind: str = "component") -> Spec:
    """Read a component spec written in any of its forms into ``(name, params, label)``.

    ``"name"``; ``{name: …, <params>…, label: …}``; or the resolved form ``{name: …,
    params: {…}, label: …}`` (a mapping whose only other key is a mapping ``params``).
    ``label`` is optional. The params are a new dict (the spec is not modified); they are not
    validated here (that is the component's ``Params``). Raises :class:`SpecError` (a
    ``ValueError``) naming ``kind`` when the spec is neither a name nor a mapping with a
    string ``name``, or its ``label`` is not a string.
    """
    if isinstance(spec, str):
        return Spec(spec, {}, None)
    if not isinstance(spec, Mapping):
        raise SpecError(f"a {kind} must be a name or a mapping with 'name'", spec)
    if "name" not in spec:
        raise SpecError(f"a {kind} mapping needs a 'name' key", spec)
    params = dict(spec)
    name = params.pop("name")
    label = params.pop("label", None)
    if set(params) == {"params"} and isinstance(params["params"], Mapping):
        params = dict(params["params"])  # the resolved form {name, params, label}
    if label is not None and not isinstance(label, str):
        raise SpecError("a label must be a string", label, "label")
    if not isinstance(name, str):
        raise SpecError(f"a {kind} name must be a string", name, "name")
    return Spec(name, params, label)


T = TypeVar("T", bound=Component)

# Modules whose import registers the built-in components, per kind.
_BUILTIN_MODULES: dict[str, tuple[str, ...]] = {
    "dataset": ("byzbench.data.datasets",),
    "partition": ("byzbench.data.partition",),
    "model": ("byzbench.models",),
    "attack": ("byzbench.attacks",),
    "defense": ("byzbench.defenses",),
}


class Registry(Generic[T]):
    """Maps names to component classes of one kind (``attack``, ``defense``, …)."""

    def __init__(self, kind: str, base: type[Component] | None = None,
                 required: tuple[str, ...] = (), override_one_of: tuple[str, ...] = ()
                 ) -> None:
        self.kind = kind
        self.base = base
        self.required = required
        # a subclass of ``base`` must override at least one of these methods
        self.override_one_of = override_one_of
        self.plugins: dict[str, str] = {}  # name → where it came from
        self._entries: dict[str, type[T]] = {}
        self._builtins_loaded = False
        self._entry_points_loaded = False

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator: register ``cls`` under ``name`` and set ``cls.name``."""

        def decorate(cls: type[T]) -> type[T]:
            if name in self._entries and self._entries[name] is not cls:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            cls.name = name
            self._entries[name] = cls
            return cls

        return decorate

    def _load(self) -> None:
        if not self._builtins_loaded:
            self._builtins_loaded = True
            for module in _BUILTIN_MODULES.get(self.kind, ()):
                importlib.import_module(module)
        if not self._entry_points_loaded:
            self._entry_points_loaded = True
            for ep in entry_points(group=f"byzbench.{self.kind}s"):
                if ep.name not in self._entries:
                    try:
                        cls = ep.load()
                    except Exception as exc:  # noqa: BLE001 - a broken plugin must be named
                        raise PluginError(f"{self.kind} entry point '{ep.name}' ({ep.value}) "
                                          f"failed to load: {type(exc).__name__}: {exc}"
                                          ) from None
                    self._validate_plugin(cls, f"entry point '{ep.name}' ({ep.value})")
                    cls.name = ep.name
                    self._entries[ep.name] = cls
                    self.plugins[ep.name] = f"entry point {ep.value}"

    def refresh(self) -> None:
        """Look for entry points again (after installing a plugin in this process)."""
        self._entry_points_loaded = False

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def items(self) -> Iterator[tuple[str, type[T]]]:
        self._load()
        for name in sorted(self._entries):
            yield name, self._entries[name]

    def __contains__(self, name: str) -> bool:
        try:
            self.get(name)
        except (UnknownComponentError, PluginError):
            return False
        return True

    def closest(self, name: str) -> str | None:
        matches = difflib.get_close_matches(name, self.names(), n=1, cutoff=0.5)
        return matches[0] if matches else None

    def get(self, name: str) -> type[T]:
        """The class registered under ``name``, or loaded from ``package.module:Class``."""
        self._load()
        if name in self._entries:
            return self._entries[name]
        if ":" in name:
            return self._load_plugin(name)
        raise UnknownComponentError(self.kind, name, self.names(), self.closest(name))

    def _load_plugin(self, path: str) -> type[T]:
        module_name, _, attr = path.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise PluginError(f"cannot import module '{module_name}' for {self.kind} "
                              f"'{path}': {exc}") from None
        except Exception as exc:  # noqa: BLE001 - a plugin that raises on import is named
            raise PluginError(f"module '{module_name}' (for {self.kind} '{path}') raised on "
                              f"import: {type(exc).__name__}: {exc}") from None
        cls = getattr(module, attr, None)
        if cls is None:
            raise PluginError(f"module '{module_name}' has no attribute '{attr}' "
                              f"(for {self.kind} '{path}')")
        self._validate_plugin(cls, f"'{path}'")
        if not getattr(cls, "name", ""):
            cls.name = path
        return cls

    def _validate_plugin(self, cls: Any, where: str) -> None:
        if not isinstance(cls, type):
            raise PluginError(f"{self.kind} {where} is not a class")
        base = self.base
        if base is not None and not issubclass(cls, base):
            missing = [m for m in self.required if not callable(getattr(cls, m, None))]
            if missing:
                raise PluginError(f"{self.kind} {where} does not implement "
                                  f"{', '.join(missing)} (subclass {base.__module__}."
                                  f"{base.__name__})")
        elif base is not None and self.override_one_of and not any(
                getattr(cls, m) is not getattr(base, m) for m in self.override_one_of):
            raise PluginError(f"{self.kind} {where} does not implement "
                              f"{' or '.join(self.override_one_of)}")
        params = getattr(cls, "Params", None)
        if not (isinstance(params, type) and issubclass(params, BaseModel)):
            raise PluginError(f"{self.kind} {where} has no pydantic 'Params' model")


DATASETS: Registry[Component] = Registry("dataset")
PARTITIONS: Registry[Component] = Registry("partition")
MODELS: Registry[Component] = Registry("model")
# ATTACKS and DEFENSES are bound to their base classes in attacks/base.py and
# defenses/base.py, which set ``base`` and ``required`` on import.
ATTACKS: Registry[Component] = Registry("attack")
DEFENSES: Registry[Component] = Registry("defense")

REGISTRIES: dict[str, Registry[Component]] = {
    r.kind: r for r in (DATASETS, PARTITIONS, MODELS, ATTACKS, DEFENSES)
}
