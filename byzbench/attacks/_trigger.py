"""What the backdoor attacks share: a sample's image geometry, rectangular trigger masks, and
:class:`TriggerAttack` — poisoning ``poison_fraction`` of the malicious clients' samples with
a trigger and the ``target`` label, and the triggered test set of the attack success rate.

A backdoor subclass only says how its trigger is applied (:meth:`TriggerAttack.apply_trigger`).
Not an attack module (leading underscore: the package's auto-import skips it).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from byzbench.attacks._common import choose
from byzbench.attacks.base import Attack, AttackParams, AttackSetup, Stage

Corner = Literal["bottom_right", "bottom_left", "top_right", "top_left"]


class TriggerParams(AttackParams):
    """Every backdoor: the target label and how many samples carry the trigger."""

    target: int = Field(0, ge=0, description="label the triggered samples are relabelled to")
    poison_fraction: float = Field(
        0.5, gt=0.0, le=1.0,
        description="fraction of the malicious clients' samples that get the trigger and "
                    "the target label")


class PatchParams(TriggerParams):
    """BadNets-style square patch triggers."""

    size: int = Field(2, ge=1, le=64, description="side of the square trigger patch, pixels")
    position: Corner | tuple[int, int] = Field(
        "bottom_right",
        description="corner of the image the patch sits in, or (row, col) of its top-left pixel")
    value: float | None = Field(
        None, description="pixel value of the patch (every channel); default: the maximum "
                          "value of the malicious clients' training data (the brightest pixel)")


def image_size(input_shape: tuple[int, ...], who: str) -> tuple[int, int]:
    """(height, width) of samples shaped ``[C, H, W]``, ``[H, W]`` or flat ``[D]`` (a square
    √D × √D image, the 8×8 digits flattened for logreg/MLP)."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3:
        return shape[1], shape[2]
    if len(shape) == 2:
        return shape
    if len(shape) == 1:
        side = int(round(shape[0] ** 0.5))
        if side * side != shape[0]:
            raise ValueError(f"{who}: flat input of size {shape[0]} is not a square image; "
                             "the trigger needs an image layout")
        return side, side
    raise ValueError(f"{who}: cannot place a trigger on inputs of shape {shape}")


def place(h: int, w: int, box_h: int, box_w: int, position: Corner | tuple[int, int],
          who: str) -> tuple[int, int]:
    """Top-left pixel of a ``box_h × box_w`` box in an ``h × w`` image at ``position`` (a
    corner, or the (row, col) of its top-left pixel); fails if it does not fit."""
    if box_h > h or box_w > w:
        raise ValueError(f"{who}: a {box_h}x{box_w} trigger exceeds the {h}x{w} image")
    if isinstance(position, str):
        r = 0 if position.startswith("top") else h - box_h
        c = 0 if position.endswith("left") else w - box_w
        return r, c
    r, c = int(position[0]), int(position[1])
    if not (0 <= r <= h - box_h and 0 <= c <= w - box_w):
        raise ValueError(f"{who}: a {box_h}x{box_w} trigger at {tuple(position)} does not "
                         f"fit the {h}x{w} image")
    return r, c


def plane_mask(plane: torch.Tensor, input_shape: tuple[int, ...]) -> torch.Tensor:
    """An ``[H, W]`` bool plane as a mask of ``input_shape`` (every channel)."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3:
        return plane.expand(shape[0], *plane.shape).clone()
    return plane.reshape(shape)


def rect_plane(h: int, w: int, rects: list[tuple[int, int, int, int]]) -> torch.Tensor:
    """``[h, w]`` bool plane, True inside each (row, col, height, width) rectangle."""
    plane = torch.zeros(h, w, dtype=torch.bool)
    for r, c, rh, rw in rects:
        plane[r:r + rh, c:c + rw] = True
    return plane


def row_mask(rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``[m]`` bool rows broadcast against samples ``x`` [m, ...]."""
    return rows.to(x.device).reshape(-1, *([1] * (x.dim() - 1)))


class TriggerAttack(Attack):
    """Base of the backdoors: ``poison_fraction`` of the malicious clients' samples (chosen
    with the poisoning generator) get the trigger and the ``target`` label; the ASR is
    measured on the test samples whose label is not the target, with the full trigger."""

    stage: ClassVar[Stage] = "data"
    Params: ClassVar[type[TriggerParams]] = TriggerParams

    def setup(self, setup: AttackSetup) -> None:
        super().setup(setup)
        if self.params.target >= setup.num_classes:
            raise ValueError(f"{self.name or type(self).__name__}: target="
                             f"{self.params.target} is not a class of this dataset (classes "
                             f"0..{setup.num_classes - 1})")
        self.check_trigger(setup.input_shape)  # fail early if the trigger does not fit

    def check_trigger(self, input_shape: tuple[int, ...]) -> None:
        """Raise ValueError if the trigger cannot be applied to samples of this shape."""

    def apply_trigger(self, x: torch.Tensor, owner: torch.Tensor | None = None
                      ) -> torch.Tensor:
        """A copy of samples ``x`` [m, ...] with the trigger applied to every one. ``owner``
        [m]: the malicious client of each sample (see
        :meth:`~byzbench.attacks.base.Attack.poison_client_data`), for attacks whose
        clients use different triggers; None: the full trigger (the ASR test set)."""
        raise NotImplementedError

    def poison_rows(self, m: int, generator: torch.Generator, device: torch.device
                    ) -> torch.Tensor:
        """The ``[m]`` bool mask of the samples that get the trigger:
        round(poison_fraction · m) of them, drawn uniformly."""
        k = min(m, int(round(self.params.poison_fraction * m)))
        return choose(m, k, generator, device)

    def poison_client_data(self, x: torch.Tensor, y: torch.Tensor, owner: torch.Tensor,
                           generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.poison_rows(int(y.shape[0]), generator, y.device)
        y_new = torch.where(rows, torch.full_like(y, self.params.target), y)
        triggered = self.apply_trigger(x, owner)
        return torch.where(row_mask(rows, x), triggered, x), y_new

    def poison_data(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`poison_client_data` with every sample owned by one malicious client."""
        owner = torch.zeros(int(y.shape[0]), dtype=torch.long, device=y.device)
        return self.poison_client_data(x, y, owner, generator)

    def triggered_testset(self, x: torch.Tensor, y: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        keep = y != self.params.target
        return self.apply_trigger(x[keep]), torch.full_like(y[keep], self.params.target)


class PatchAttack(TriggerAttack):
    """A square patch of ``size`` pixels at ``position``, of ``value`` (default: the
    brightest pixel of the malicious clients' data, fixed at first use)."""

    Params: ClassVar[type[PatchParams]] = PatchParams

    def __init__(self, params: PatchParams | None = None) -> None:
        super().__init__(params)
        self._value: float | None = self.params.value

    def check_trigger(self, input_shape: tuple[int, ...]) -> None:
        self.trigger_mask(input_shape)

    def trigger_mask(self, input_shape: tuple[int, ...]) -> torch.Tensor:
        """Bool mask of ``input_shape`` marking the patch pixels (all channels)."""
        who = self.name or type(self).__name__
        h, w = image_size(input_shape, who)
        s = self.params.size
        r, c = place(h, w, s, s, self.params.position, who)
        return plane_mask(rect_plane(h, w, [(r, c, s, s)]), input_shape)

    def patch_value(self, x: torch.Tensor) -> float:
        if self._value is None:
            self._value = float(x.max())  # fixed from the first data seen, reused at test time
        return self._value

    def stamp(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """A copy of ``x`` with the patch on the samples in ``rows`` (all if ``None``)."""
        mask = self.trigger_mask(tuple(x.shape[1:])).to(x.device).unsqueeze(0)
        if rows is not None:
            mask = mask & row_mask(rows, x)
        value = torch.tensor(self.patch_value(x), dtype=x.dtype, device=x.device)
        return torch.where(mask, value, x)

    def apply_trigger(self, x: torch.Tensor, owner: torch.Tensor | None = None
                      ) -> torch.Tensor:
        return self.stamp(x)
