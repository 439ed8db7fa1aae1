"""Grid files: YAML → validated grid → one fully resolved :class:`CellConfig` per cell.

A grid file has ``name``, ``description``, ``base`` (settings shared by every cell),
``grid`` (axes whose cartesian product gives the cells) and optional per-name parameter
blocks ``attacks:`` / ``defenses:`` (also ``datasets:``, ``models:``, ``partitions:``).
An axis is a setting's dotted path (``attack``, ``seed``, ``partition.alpha``,
``local.lr``…); a component axis entry is a name or a mapping
``{name: scaling, factor: 10, label: "scaling x10"}``. A defense name ``a+b`` is shorthand
for the pipeline ``{name: pipeline, layers: [a, b]}``.

Each resolved cell has a stable id: a hash of its fully resolved configuration (defaults
filled in; labels, ``device`` and ``client_chunk`` excluded), so editing a grid re-runs only
the cells whose configuration changed. Every user mistake raises :class:`ConfigError`
naming the file, the key path, the bad value, what is allowed and the closest valid name.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import itertools
import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from byzbench import yamlfile
from byzbench.registry import (
    REGISTRIES,
    PluginError,
    SpecError,
    UnknownComponentError,
    split_spec,
)
from byzbench.threat import count_of

COMPONENT_FIELDS: dict[str, str] = {
    "dataset": "dataset", "model": "model", "partition": "partition",
    "attack": "attack", "defense": "defense",
}
BLOCK_KEYS: dict[str, str] = {
    "datasets": "dataset", "models": "model", "partitions": "partition",
    "attacks": "attack", "defenses": "defense",
}
STANDARD_AXES = ("attack", "defense", "malicious_fraction", "seed")
# settings that say how a cell runs, not what it computes: left out of the cell id
EXECUTION_FIELDS = ("device", "client_chunk")
# a sane cap on a simulated federation (each round trains every participant in one batch)
MAX_CLIENTS = 1_000_000


class ConfigError(ValueError):
    """A user mistake in a grid file; the message is meant to be shown as it is."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ComponentSpec(_Strict):
    """A resolved component: registered name, validated parameters, display label."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    label: str | None = None

    @property
    def display(self) -> str:
        return self.label or self.name


class LocalConfig(_Strict):
    """Local training of every client (SGD)."""

    steps: int | None = Field(5, ge=1, description="local SGD steps per round (random batches)")
    epochs: int | None = Field(None, ge=1, description="local epochs per round (instead of steps)")
    batch_size: int = Field(32, ge=1)
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> LocalConfig:
        if self.epochs is not None and self.steps is not None and "steps" in self.model_fields_set:
            raise ValueError("set either local.steps or local.epochs, not both")
        if self.epochs is not None and self.steps is not None:
            object.__setattr__(self, "steps", None)
        if self.epochs is None and self.steps is None:
            raise ValueError("set local.steps or local.epochs")
        return self


class ServerConfig(_Strict):
    lr: float = Field(1.0, gt=0, description="server learning rate: θ ← θ + lr · aggregate")


class SecAggConfig(_Strict):
    """Fixed-point encoding and masking graph of secure aggregation (Bonawitz et al., CCS
    2017; SecAgg+ of Bell et al., CCS 2020)."""

    range: float = Field(1.0, gt=0, description="each coordinate is clipped to [-range, range] "
                                                "before quantization")
    bits: int = Field(62, ge=8, le=62, description="masks and sums live mod 2^bits (in uint64 "
                                                   "words)")
    fraction_bits: int | None = Field(
        None, ge=1, le=52, description="fixed-point precision (None: the most that keeps the "
                                       "sum of every client's range below 2^(bits-1))")
    degree: int | None = Field(
        None, ge=1, description="SecAgg+ neighbours per client (None: O(log n) as in Bell et "
                                "al.); ignored by plain SecAgg, whose graph is complete")


def secagg_fraction_bits(n: int, bound: float, bits: int, cap: int | None = None) -> int:
    """The most fraction bits f (at most ``cap``) for which a sum of ``n`` fixed-point values,
    each rounded from [-bound, bound] at scale 2^f, stays below 2^(bits-1) in magnitude, so it
    decodes exactly from the ring mod 2^bits; a negative result means no f ≥ 0 fits."""
    limit = 2 ** (bits - 1) - 1
    f = min(cap if cap is not None else 62, 62)
    while f >= 0 and n * math.ceil(bound * 2.0 ** f) > limit:
        f -= 1
    return f


def secagg_min_bits(n: int, bound: float, fraction_bits: int) -> int:
    """The fewest ring bits for which :func:`secagg_fraction_bits` reaches ``fraction_bits``."""
    bits = 8
    while bits <= 62 and secagg_fraction_bits(n, bound, bits, fraction_bits) < fraction_bits:
        bits += 1
    return bits


class DPConfig(_Strict):
    """DP-FedAvg (McMahan et al., ICLR 2018): clip each update to L2 norm ``clip`` and add
    Gaussian noise of standard deviation ``sigma · clip``, at the server (``central``, after
    the defense) or at each client (``local``, before the defense sees the update)."""

    mode: Literal["none", "central", "local"] = "none"
    clip: float = Field(1.0, gt=0, description="per-client L2 clipping norm C")
    sigma: float | None = Field(None, gt=0, description="noise multiplier (noise std = sigma·C)")
    epsilon: float | None = Field(None, gt=0, description="target ε of the whole run at delta "
                                                          "(the accountant finds sigma)")
    delta: float = Field(1e-5, gt=0, lt=1)

    @model_validator(mode="after")
    def _sigma_or_epsilon(self) -> DPConfig:
        if self.mode == "none":
            return self
        if (self.sigma is None) == (self.epsilon is None):
            raise ValueError(f"privacy.dp.mode '{self.mode}' needs exactly one of sigma "
                             f"(noise multiplier) or epsilon (target for the run)")
        return self


class PrivacyConfig(_Strict):
    """What the cell does for the clients' privacy: secure aggregation and/or DP."""

    secure_aggregation: Literal["none", "secagg", "secagg+"] = "none"
    secagg: SecAggConfig = SecAggConfig()
    dp: DPConfig = DPConfig()

    @property
    def active(self) -> bool:
        return self.secure_aggregation != "none" or self.dp.mode != "none"


class CellConfig(_Strict):
    """Everything one simulation needs; every field has a default."""

    dataset: ComponentSpec = ComponentSpec(name="digits")
    model: ComponentSpec = ComponentSpec(name="mlp")
    partition: ComponentSpec = ComponentSpec(name="iid")
    clients: int = Field(20, ge=2, le=MAX_CLIENTS, description="clients in the federation")
    clients_per_round: int | None = Field(None, ge=1, description="sampled per round (all)")
    rounds: int = Field(30, ge=1)
    local: LocalConfig = LocalConfig()
    server: ServerConfig = ServerConfig()
    eval_every: int = Field(5, ge=1, description="evaluate every k rounds (and the last)")
    malicious_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    privacy: PrivacyConfig = PrivacyConfig()
    attack: ComponentSpec = ComponentSpec(name="none")
    defense: ComponentSpec = ComponentSpec(name="fedavg")
    seed: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where the cell's tensors live: auto = cuda when torch sees a GPU")
    client_chunk: int | None = Field(
        None, ge=1, description="train at most this many clients in one vectorized batch "
                                "(bounds memory for large federations; all at once)")

    @model_validator(mode="after")
    def _counts(self) -> CellConfig:
        if self.clients_per_round is not None and self.clients_per_round > self.clients:
            raise ValueError(f"clients_per_round ({self.clients_per_round}) exceeds clients "
                             f"({self.clients})")
        self._check_secagg()
        f = self.num_malicious
        if f >= self.clients:
            raise ValueError(f"malicious_fraction {self.malicious_fraction} of {self.clients} "
                             f"clients makes {f} malicious, leaving no honest client")
        return self

    def _check_secagg(self) -> None:
        """The secure sum of every participant's clipped update must fit the ring."""
        if self.privacy.secure_aggregation == "none":
            return
        sa, n = self.privacy.secagg, self.participants
        want = sa.fraction_bits if sa.fraction_bits is not None else 1
        if secagg_fraction_bits(n, sa.range, sa.bits, sa.fraction_bits) < want:
            need = secagg_min_bits(n, sa.range, want)
            allowed = f"{need}..62" if need <= 62 else "none (lower range or fraction_bits)"
            raise ValueError(f"privacy.secagg.bits {sa.bits} is too small for {n} clients × "
                             f"range {sa.range:g} at {want} fraction bits (the sum must stay "
                             f"below 2^(bits-1)); allowed bits: {allowed}")

    @property
    def num_malicious(self) -> int:
        """f = round-half-up(malicious_fraction × clients): 0.25 × 10 = 2.5 → 3."""
        return count_of(self.malicious_fraction, self.clients)

    @property
    def participants(self) -> int:
        return self.clients_per_round or self.clients

    def identity(self) -> dict[str, Any]:
        """The resolved configuration that defines the cell's results: no labels, and none
        of the execution settings (device, client_chunk), which do not change the numbers."""
        data = self.model_dump(mode="json", exclude=set(EXECUTION_FIELDS))
        if not self.privacy.active:
            # cells without privacy keep the ids they had before the privacy block existed
            del data["privacy"]
        for key in COMPONENT_FIELDS:
            data[key].pop("label", None)
        return data

    def cell_id(self) -> str:
        text = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# settings blocks whose sub-settings may be grid axes by dotted path
SUB_BLOCKS: dict[str, type[BaseModel]] = {
    "local": LocalConfig, "server": ServerConfig, "privacy": PrivacyConfig}


class Cell(_Strict):
    """One cell of a grid: its id, its axis values (display labels) and its configuration."""

    id: str
    axes: dict[str, Any]
    config: CellConfig


class Grid(_Strict):
    """A validated grid file."""

    name: str
    description: str = ""
    source: str = "<memory>"
    axes: dict[str, list[Any]]
    cells: list[Cell]
    warnings: tuple[str, ...] = ()  # said before running (e.g. an explicitly empty grid)


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_TOP_KEYS = ("name", "description", "base", "grid", *BLOCK_KEYS)


def _suggest(word: str, options: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else ""


def _fmt_loc(prefix: str, loc: Iterable[Any]) -> str:
    out = prefix
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


class _Resolver:
    """Turns the raw YAML mapping of a grid into cells, raising ConfigError on mistakes."""

    def __init__(self, raw: Any, source: str) -> None:
        self.source = source
        if not isinstance(raw, dict):
            self.fail("", "a grid file must be a mapping with keys name, base, grid", raw)
        self.raw = raw

    def fail(self, where: str, message: str, value: Any = ..., allowed: str = "") -> None:
        parts = [f"{self.source}: {where or '<top level>'}: {message}"]
        if value is not ...:
            parts.append(f"(got {value!r})")
        text = " ".join(parts)
        if allowed:
            text += f"; allowed: {allowed}"
        raise ConfigError(text)

    # -- components -------------------------------------------------------------------------

    def component(self, kind: str, entry: Any, where: str, extra: dict[str, Any] | None = None,
                  exact: bool = False) -> ComponentSpec:
        """Resolve ``entry`` (a name or a mapping) into a spec with validated parameters."""
        try:
            name, params, label = split_spec(entry, kind)
        except SpecError as exc:
            self.fail(f"{where}.{exc.part}" if exc.part else where, exc.reason, exc.value)
        if kind == "defense" and "+" in name:
            layers = [part.strip() for part in name.split("+")]
            for i, layer in enumerate(layers):
                self._lookup(kind, layer, f"{where} (layer {i + 1} of '{name}')")
            params = {"layers": layers, **params}
            label = label or name
            name = "pipeline"
        cls = self._lookup(kind, name, where)
        merged = {**self.blocks.get(kind, {}).get(name, {}), **(extra or {}), **params}
        try:
            validated = cls.Params(**merged)
        except ValidationError as exc:
            self._params_error(kind, name, cls.Params, exc, where, exact)
        except (ValueError, TypeError, LookupError) as exc:
            self.fail(where, f"invalid parameters for {kind} '{name}': {exc}")
        return ComponentSpec(name=name, params=validated.model_dump(mode="json"), label=label)

    def _lookup(self, kind: str, name: str, where: str) -> Any:
        registry = REGISTRIES[kind]
        try:
            return registry.get(name)
        except UnknownComponentError as exc:
            hint = f"; did you mean '{exc.suggestion}'?" if exc.suggestion else ""
            raise ConfigError(f"unknown {kind} '{name}' at {where} in {self.source}{hint} "
                              f"(allowed: {', '.join(exc.allowed)}, or package.module:Class)"
                              ) from None
        except PluginError as exc:
            raise ConfigError(f"{self.source}: {where}: {exc}") from None

    def _params_error(self, kind: str, name: str, model: type[BaseModel], exc: ValidationError,
                      where: str, exact: bool = False) -> None:
        err = exc.errors()[0]
        loc = where if exact else _fmt_loc(where, err["loc"])
        if err["type"] == "extra_forbidden":
            key = str(err["loc"][-1])
            allowed = ", ".join(model.model_fields) or "none"
            self.fail(loc, f"unknown parameter '{key}' for {kind} '{name}'"
                      f"{_suggest(key, model.model_fields)}", allowed=allowed)
        self.fail(loc, f"{err['msg']} for {kind} '{name}'", err.get("input", ...))

    # -- the grid ---------------------------------------------------------------------------

    def resolve(self) -> Grid:
        raw = self.raw
        for key in raw:
            if key not in _TOP_KEYS:
                self.fail(str(key), f"unknown key{_suggest(str(key), _TOP_KEYS)}",
                          allowed=", ".join(_TOP_KEYS))
        name = raw.get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            self.fail("name", "a grid needs a name of letters, digits, '_', '.', '-'", name)
        description = raw.get("description", "") or ""
        base = raw.get("base", {}) or {}
        axes = raw.get("grid", {}) or {}
        warnings: list[str] = []
        if "grid" in raw and axes == {}:
            warnings.append(f"{self.source}: grid: no axes (written as empty): the grid is "
                            "the single cell of the base settings; list an axis, e.g. "
                            "'seed: [0, 1]', or leave the 'grid' key out to mean one cell")
        if not isinstance(base, dict):
            self.fail("base", "must be a mapping of settings", base)
        if not isinstance(axes, dict):
            self.fail("grid", "must be a mapping from setting paths to lists of values", axes)
        self.blocks: dict[str, dict[str, dict[str, Any]]] = {}
        for block, kind in BLOCK_KEYS.items():
            entries = raw.get(block, {}) or {}
            if not isinstance(entries, dict):
                self.fail(block, f"must map {kind} names to parameter mappings", entries)
            for comp, params in entries.items():
                if not isinstance(params, dict):
                    self.fail(f"{block}.{comp}", "must be a mapping of parameters", params)
                self._lookup(kind, str(comp), f"{block}.{comp}")
            self.blocks[kind] = entries
        for block, kind in BLOCK_KEYS.items():
            for comp in self.blocks[kind]:
                self.component(kind, str(comp), f"{block}.{comp}")

        base = copy.deepcopy(base)
        for key in list(base):
            if key in COMPONENT_FIELDS:
                base[key] = self.component(key, base[key], f"base.{key}").model_dump()
        base_cell = self.validate_cell(base, "base")

        axis_values: dict[str, list[tuple[Any, Any]]] = {}  # path → [(label, value)]
        for path, values in axes.items():
            path = str(path)
            self.check_path(path, base_cell)
            if not isinstance(values, list) or not values:
                self.fail(f"grid.{path}", "an axis must be a non-empty list of values", values)
            entries = []
            for i, value in enumerate(values):
                entries.append(self.axis_entry(path, value, f"grid.{path}[{i}]", base))
            labels = [label for label, _ in entries]
            dupes = {x for x in labels if labels.count(x) > 1}
            if dupes:
                self.fail(f"grid.{path}", f"axis values must be distinct; repeated: "
                          f"{', '.join(map(str, sorted(dupes, key=str)))} (give each a label)")
            axis_values[path] = entries

        cells: list[Cell] = []
        seen: dict[str, dict[str, Any]] = {}
        paths = list(axis_values)
        for combo in itertools.product(*(axis_values[p] for p in paths)):
            cell_raw = copy.deepcopy(base)
            labels: dict[str, Any] = {}
            for path, (label, value) in zip(paths, combo):
                _set_path(cell_raw, path, copy.deepcopy(value))
                labels[path] = label
            config = self.validate_cell(cell_raw, "cell " + ", ".join(
                f"{k}={v}" for k, v in labels.items()))
            cell_id = config.cell_id()
            if cell_id in seen:
                self.fail("grid", f"two cells resolve to the same configuration: {seen[cell_id]} "
                          f"and {labels}")
            seen[cell_id] = labels
            for axis in ("attack", "defense", "malicious_fraction", "seed"):
                labels.setdefault(axis, _label_of(config, axis))
            cells.append(Cell(id=cell_id, axes=labels, config=config))
        self.check_clients(cells, "clients" in axis_values)
        return Grid(name=name, description=str(description), source=self.source,
                    axes={p: [label for label, _ in v] for p, v in axis_values.items()},
                    cells=cells, warnings=tuple(warnings))

    def check_clients(self, cells: list[Cell], on_axis: bool) -> None:
        """More clients than the dataset has training samples (a bound known without
        reading the data) fails every such cell: say so now, naming the key."""
        bounds: dict[str, int | None] = {}
        for cell in cells:
            spec = cell.config.dataset
            key = json.dumps([spec.name, spec.params], sort_keys=True, default=str)
            if key not in bounds:
                try:
                    cls = REGISTRIES["dataset"].get(spec.name)
                    bounds[key] = cls(cls.Params(**spec.params)).train_size_bound()
                except Exception:  # noqa: BLE001 - a plugin's hint is optional
                    bounds[key] = None
            bound = bounds[key]
            clients = cell.config.clients
            if bound is not None and clients > bound:
                where = "grid.clients" if on_axis else "base.clients"
                self.fail(where, f"{clients:,} clients, but dataset '{spec.name}' has at most "
                          f"{bound:,} training samples and every client needs one",
                          allowed=f"clients ≤ {bound:,} for this dataset (at most "
                                  f"{MAX_CLIENTS:,} in any case)")

    def check_path(self, path: str, base_cell: CellConfig) -> None:
        head, _, rest = path.partition(".")
        fields = CellConfig.model_fields
        if head not in fields:
            self.fail(f"grid.{path}", f"unknown setting '{head}'{_suggest(head, fields)}",
                      allowed=", ".join(fields))
        if not rest:
            return
        if head in COMPONENT_FIELDS:
            spec: ComponentSpec = getattr(base_cell, head)
            params = REGISTRIES[head].get(spec.name).Params.model_fields
            key = rest.split(".")[0]
            if key not in params and key not in ("name", "label"):
                self.fail(f"grid.{path}", f"{head} '{spec.name}' has no parameter '{key}'"
                          f"{_suggest(key, params)}", allowed=", ".join(params) or "none")
        elif head in SUB_BLOCKS:
            model: type[BaseModel] = SUB_BLOCKS[head]
            keys = rest.split(".")
            for depth, key in enumerate(keys):
                sub = model.model_fields
                if key not in sub:
                    owner = ".".join([head, *keys[:depth]])
                    self.fail(f"grid.{path}", f"unknown setting '{key}' of {owner}"
                              f"{_suggest(key, sub)}", allowed=", ".join(sub))
                inner = sub[key].annotation
                if depth < len(keys) - 1:
                    if not (isinstance(inner, type) and issubclass(inner, BaseModel)):
                        self.fail(f"grid.{path}", f"'{'.'.join([head, *keys[:depth + 1]])}' "
                                  f"has no sub-settings")
                    model = inner
        else:
            self.fail(f"grid.{path}", f"'{head}' has no sub-settings")

    def axis_entry(self, path: str, value: Any, where: str, base: dict[str, Any]
                   ) -> tuple[Any, Any]:
        """(display label, value to set at ``path``) for one axis entry, validated."""
        if path in COMPONENT_FIELDS:
            spec = self.component(path, value, where)
            label = spec.label
            if label is None:
                label = spec.name
                if isinstance(value, dict):
                    shown = {k: v for k, v in value.items() if k not in ("name", "label")}
                    if shown:
                        label += "(" + ",".join(f"{k}={v}" for k, v in shown.items()) + ")"
            return label, spec.model_dump()
        label = value
        if path in SUB_BLOCKS and isinstance(value, dict):
            # a whole block as one axis entry, e.g. privacy: [{label: central-8, dp: {...}}]
            value = dict(value)
            label = value.pop("label", None) or json.dumps(value, sort_keys=True)
        probe = copy.deepcopy(base)
        _set_path(probe, path, copy.deepcopy(value))
        self.validate_cell(probe, where, only=path)
        return label, value

    def validate_cell(self, raw: dict[str, Any], where: str, only: str | None = None
                      ) -> CellConfig:
        raw = _apply_component_params(raw)
        for key in COMPONENT_FIELDS:
            if key in raw and isinstance(raw[key], dict) and "params" in raw[key]:
                raw[key] = self.component(
                    key, {"name": raw[key]["name"], **raw[key]["params"],
                          **({"label": raw[key]["label"]} if raw[key].get("label") else {})},
                    where if only else f"{where}.{key}", exact=only is not None).model_dump()
        try:
            return CellConfig(**raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = tuple(err["loc"])
            if (only is not None and err["type"] == "value_error"
                    and 0 < len(loc) < len(only.split(".")) and
                    list(map(str, loc)) == only.split(".")[:len(loc)]):
                # a rule across settings of an enclosing block (privacy.dp.mode needs sigma
                # or epsilon): another axis may supply the rest, so it is checked per cell
                return None  # type: ignore[return-value]
            if err["type"] == "extra_forbidden":
                key = str(loc[-1])
                model: type[BaseModel] = CellConfig
                for part in loc[:-1]:
                    inner = model.model_fields[str(part)].annotation
                    if not (isinstance(inner, type) and issubclass(inner, BaseModel)):
                        break
                    model = inner
                self.fail(_fmt_loc(where, loc), f"unknown setting{_suggest(key, model.model_fields)}",
                          allowed=", ".join(model.model_fields))
            place = where if only else _fmt_loc(where, loc)
            msg = err["msg"].removeprefix("Value error, ")
            self.fail(place, msg, err.get("input", ...) if loc else ...)
        raise AssertionError("unreachable")


def _set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """Set ``data[a][b]…`` for ``path`` 'a.b…'; component params live under 'params'."""
    keys = path.split(".")
    node = data
    for i, key in enumerate(keys[:-1]):
        if i == 0 and key in COMPONENT_FIELDS:
            spec = node.get(key)
            if isinstance(spec, str):
                spec = {"name": spec, "params": {}}
            if spec is None:
                spec = CellConfig.model_fields[key].default.model_dump()
            node[key] = spec
            node = spec.setdefault("params", {})
            continue
        node = node.setdefault(key, {})
    node[keys[-1]] = value


def _apply_component_params(raw: dict[str, Any]) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    for key in COMPONENT_FIELDS:
        if isinstance(raw.get(key), str):
            raw[key] = {"name": raw[key], "params": {}}
    return raw


def _label_of(config: CellConfig, axis: str) -> Any:
    value = getattr(config, axis)
    return value.display if isinstance(value, ComponentSpec) else value


def load_yaml(path: str | Path) -> Any:
    """Parse a YAML file, turning I/O and syntax problems into ConfigError."""
    return yamlfile.load_yaml(path, ConfigError)


def grid_from_dict(raw: Any, source: str = "<memory>") -> Grid:
    """Validate a grid given as a mapping (the parsed YAML) and resolve its cells."""
    return _Resolver(raw, source).resolve()


def load_grid(path: str | Path) -> Grid:
    """Read, validate and resolve a grid YAML file."""
    return grid_from_dict(load_yaml(path), str(path))
