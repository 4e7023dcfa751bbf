"""Binary masks over a model's prunable weights (conv and linear weights; never biases or BatchNorm)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import nn

PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def prunable_names(model: nn.Module, keep_first_dense: bool = False, keep_classifier_dense: bool = False) -> list[str]:
    """Parameter names of prunable weights in module order; the first and last can be kept dense."""
    names = [
        f"{module_name}.weight" if module_name else "weight"
        for module_name, module in model.named_modules()
        if isinstance(module, PRUNABLE_TYPES)
    ]
    if keep_classifier_dense and names:
        names = names[:-1]
    if keep_first_dense and names:
        names = names[1:]
    return names


class Mask(Mapping[str, torch.Tensor]):
    """One boolean tensor per prunable weight; True = alive.

    Layer order is the model's module order, which makes global rankings and tie-breaks deterministic.
    """

    def __init__(self, masks: Mapping[str, torch.Tensor]) -> None:
        self._masks = {name: m.to(torch.bool) for name, m in masks.items()}

    @classmethod
    def ones(cls, model: nn.Module, keep_first_dense: bool = False, keep_classifier_dense: bool = False) -> Mask:
        params = dict(model.named_parameters())
        names = prunable_names(model, keep_first_dense, keep_classifier_dense)
        return cls({name: torch.ones_like(params[name], dtype=torch.bool) for name in names})

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._masks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def total(self) -> int:
        return sum(m.numel() for m in self._masks.values())

    def alive(self) -> int:
        return int(sum(int(m.sum()) for m in self._masks.values()))

    def density(self) -> float:
        """Fraction of prunable weights still alive."""
        total = self.total()
        return self.alive() / total if total else 1.0

    def layer_density(self) -> dict[str, float]:
        return {name: float(m.float().mean()) for name, m in self._masks.items()}

    def layer_counts(self) -> dict[str, tuple[int, int]]:
        """(alive, total) per layer: the mask summary a sweep logs."""
        return {name: (int(m.sum()), m.numel()) for name, m in self._masks.items()}

    def to(self, device: torch.device | str) -> Mask:
        return Mask({name: m.to(device) for name, m in self._masks.items()})

    @torch.no_grad()
    def apply(self, model: nn.Module) -> None:
        """Zero the pruned weights of `model` in place."""
        params = dict(model.named_parameters())
        for name, m in self._masks.items():
            params[name].mul_(m.to(params[name].device, params[name].dtype))

    def prune(self, remove: Mapping[str, torch.Tensor]) -> Mask:
        """A new mask with the True positions of `remove` turned off."""
        return Mask({name: m & ~remove[name].to(m.device) if name in remove else m for name, m in self._masks.items()})

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: m.cpu().clone() for name, m in self._masks.items()}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> Mask:
        return cls(state)

    def save(self, path: str | Path) -> None:
        torch.save(self.state_dict(), path)

    @classmethod
    def load(cls, path: str | Path) -> Mask:
        return cls(torch.load(path, map_location="cpu", weights_only=True))

    def equal(self, other: Mask) -> bool:
        return self._masks.keys() == other._masks.keys() and all(
            torch.equal(m.cpu(), other[name].cpu()) for name, m in self._masks.items()
        )


def named_weights(model: nn.Module, mask: Mask) -> dict[str, torch.Tensor]:
    """The model's prunable weights (detached), keyed like the mask."""
    params = dict(model.named_parameters())
    return {name: params[name].detach() for name in mask}


class MaskedParameters:
    """Keeps pruned weights exactly zero: masks gradients before and weights after every optimizer step."""

    def __init__(self, model: nn.Module, mask: Mask) -> None:
        params = dict(model.named_parameters())
        self.params = [params[name] for name in mask]
        # empty_like keeps each weight's memory format (channels-last), so the fused multiplies see equal strides.
        self.masks = [torch.empty_like(p).copy_(mask[name]) for name, p in zip(mask, self.params, strict=True)]

    @torch.no_grad()
    def mask_grads(self) -> None:
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            return
        if len(grads) == len(self.params):
            torch._foreach_mul_(grads, self.masks)
        else:
            for p, m in zip(self.params, self.masks, strict=True):
                if p.grad is not None:
                    p.grad.mul_(m)

    @torch.no_grad()
    def mask_weights(self) -> None:
        if self.params:
            torch._foreach_mul_(self.params, self.masks)

    @torch.no_grad()
    def clear_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        """Zero momentum / Adam moments at pruned positions, so a pruned weight cannot drift back."""
        for p, m in zip(self.params, self.masks, strict=True):
            for value in optimizer.state.get(p, {}).values():
                if isinstance(value, torch.Tensor) and value.shape == p.shape:
                    value.mul_(m)
