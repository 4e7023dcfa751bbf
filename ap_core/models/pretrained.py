"""Starting weights from a state-dict file: read without unpickling anything, checked key by key against the model.

Nothing is downloaded: a zoo's pretrained weights are a file the user fetched once (torchvision's `.pth`, timm's
`.safetensors`) and names with `--pretrained-weights`, so a trial computes the same thing offline and on every node.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ap_core.errors import ConfigError
from ap_core.masks import prunable_names


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The tensors of state-dict file `path`: safetensors, or torch.save's format read with weights_only=True (a
    file from shared storage cannot run code). A missing or unreadable file is a ConfigError naming it."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"pretrained_weights file '{path}' does not exist")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(file, device="cpu")
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file is the same user-facing problem
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"pretrained_weights '{path}' is not a readable state_dict ({reason[:200]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"pretrained_weights '{path}' holds no flat state_dict of tensors (save model.state_dict())")
    return state


def load_pretrained(model: nn.Module, path: str) -> list[str]:
    """Load `path` into `model`; returns the classifier entries left at their fresh initialisation.

    The classifier (the last prunable layer) is loaded only when its shape matches: ImageNet weights for a CIFAR
    head of 10 classes keep everything but the head, which starts untrained. Any other missing, extra or
    differently shaped entry is a ConfigError naming it: the file is for another network.
    """
    state = read_state_dict(path)
    own = model.state_dict()
    classifier = prunable_names(model)[-1].removesuffix("weight")
    head = [k for k in own if k.startswith(classifier) and k in state and state[k].shape != own[k].shape]
    for key in head:
        del state[key]
    # Files saved before BatchNorm counted its batches (torchvision's first ImageNet weights) lack the counter.
    missing = [k for k in own if k not in state and k not in head and not k.endswith(".num_batches_tracked")]
    extra = [k for k in state if k not in own]
    reshaped = [k for k in state if k in own and state[k].shape != own[k].shape]
    if missing or extra or reshaped:
        key = (missing or extra or reshaped)[0]
        problem = "lacks" if missing else "has an extra" if extra else "has another shape for"
        raise ConfigError(f"pretrained_weights '{path}' {problem} entry {key!r}: it is for another network")
    model.load_state_dict(state, strict=False)
    return head
