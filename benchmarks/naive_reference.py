"""BASELINE, NOT THIS PROJECT'S CODE: a training epoch written the way many pruning research scripts write it.

`benchmarks/run.py` times this loop against the project's loop on the same model (from `ap_core.build_model`),
the same uint8 images with the same augmentation (random 4-pixel-padded crop and horizontal flip), the same
masks and the same dead-neuron counting, so the ratio says what the project's design saves, not what a different
workload costs. Written like the scripts it stands for (the AP authors' own among them):

- a torch DataLoader with no workers, decoding every sample through PIL and torchvision's per-sample transforms;
- pruning masks kept as NumPy arrays and applied on the host after every backward pass and every optimizer step
  (gradient and weights copied to NumPy and back);
- the loss read back with `.item()` every batch, dead neurons counted in NumPy in forward hooks;
- a full pass over the training set every epoch to report training accuracy, then one over the test set.

Nothing here is used by a trial; do not copy it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from ap_core import ArrayDataset


class PilImages(Dataset):
    """uint8 NCHW images served one PIL image at a time, as torchvision's CIFAR10 serves them."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable) -> None:
        self.images = images.permute(0, 2, 3, 1).numpy()  # HWC, as PIL wants
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = Image.fromarray(self.images[index].squeeze(-1) if self.images.shape[-1] == 1 else self.images[index])
        return self.transform(image), self.labels[index]


class NaiveReference:
    """One model trained epoch by epoch in the naive style; `epoch()` returns (train acc %, test acc %, DNR)."""

    def __init__(
        self, model: nn.Module, data: ArrayDataset, masks: dict[str, torch.Tensor], batch_size: int, seed: int = 0
    ) -> None:
        if not data.pixel_max:
            raise ValueError("the naive reference decodes uint8 images through PIL; this dataset stores floats")
        normalise = [transforms.ToTensor(), transforms.Normalize(data.mean, data.std)]
        augment = [transforms.RandomCrop(data.input_shape[-1], padding=data.crop_padding)] if data.crop_padding else []
        augment += [transforms.RandomHorizontalFlip()] if data.flip else []
        train_transform = transforms.Compose([*augment, *normalise])
        plain_transform = transforms.Compose(normalise)
        torch.manual_seed(seed)
        self.train_loader = DataLoader(
            PilImages(data.x_train, data.y_train, train_transform), batch_size=batch_size, shuffle=True
        )
        self.train_eval_loader = DataLoader(PilImages(data.x_train, data.y_train, plain_transform), batch_size=1000)
        self.test_loader = DataLoader(PilImages(data.x_test, data.y_test, plain_transform), batch_size=1000)
        self.model = model
        self.device = next(model.parameters()).device
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        self.masks = {name: m.numpy() for name, m in masks.items()}
        self.dead = 0
        self.seen = 0
        for module in model.modules():
            if isinstance(module, nn.ReLU):
                module.register_forward_hook(self._count_dead)

    def _count_dead(self, _module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        if self.model.training:
            values = output.detach().cpu().numpy()
            self.dead += int(np.sum(values == 0))
            self.seen += values.size

    def _apply_masks(self, to_grads: bool) -> None:
        for name, param in self.model.named_parameters():
            if name in self.masks:
                tensor = param.grad if to_grads else param
                tensor.data = torch.from_numpy(tensor.data.cpu().numpy() * self.masks[name]).to(tensor.device)

    def _accuracy(self, loader: DataLoader) -> float:
        self.model.eval()
        correct = total = 0
        with torch.no_grad():
            for x, y in loader:
                x, y = x.to(self.device), y.to(self.device)
                correct += (self.model(x).argmax(1) == y).sum().item()
                total += len(y)
        return 100.0 * correct / total

    def epoch(self) -> tuple[float, float, float]:
        self.model.train()
        self.dead = self.seen = 0
        running_loss = 0.0
        for x, y in self.train_loader:
            x, y = x.to(self.device), y.to(self.device)
            self.optimizer.zero_grad()
            loss = F.cross_entropy(self.model(x), y)
            loss.backward()
            self._apply_masks(to_grads=True)
            self.optimizer.step()
            self._apply_masks(to_grads=False)
            running_loss += loss.item()
        dnr = self.dead / self.seen
        return self._accuracy(self.train_eval_loader), self._accuracy(self.test_loader), dnr
