"""A tiny Vision Transformer (Dosovitskiy et al. 2021) for small images: embed dim 192, depth 4, 3 heads,
MLP ratio 2, class token, learned position embedding, pre-norm blocks, no dropout.

Attention is written out with nn.Linear qkv / proj layers (not nn.MultiheadAttention, whose packed
in-projection is a bare Parameter) so every weight matrix is a prunable Linear, and the MLP activation is an
nn.GELU module so activation hooks see it. The attention product is explicit rather than
F.scaled_dot_product_attention: at <= 65 tokens it costs nothing and its backward is deterministic on GPU.

Patch size is the largest of 4, 2, 1 that divides H and W and still leaves at least a 4x4 token grid:
32x32 CIFAR and 28x28 MNIST use 4 (8x8 / 7x7 tokens), 8x8 digits use 2 (4x4 tokens).

Initialisation follows the usual ViT recipe rather than He init: truncated normal (std 0.02) for Linear
weights, the patch embedding, the class token and the position embedding; zero biases; LayerNorm at identity.
"""

import torch
from torch import nn

from ap_core.models.base import MODELS, image_shape

_EMBED_DIM = 192
_DEPTH = 4
_HEADS = 3
_MLP_RATIO = 2
_MIN_GRID = 4
_INIT_STD = 0.02


def patch_size(height: int, width: int) -> int:
    """Largest of 4, 2, 1 dividing both sides with at least a 4x4 token grid (1 if none does)."""
    for size in (4, 2):
        if height % size == 0 and width % size == 0 and min(height, width) // size >= _MIN_GRID:
            return size
    return 1


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv Linear and an output projection Linear."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(batch, tokens, dim))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim * mlp_ratio)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(dim * mlp_ratio, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class VisionTransformer(nn.Module):
    """Conv patch embedding, class token + position embedding, blocks, final LayerNorm, Linear head."""

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int]) -> None:
        super().__init__()
        in_channels, height, width = input_shape
        patch = patch_size(height, width)
        tokens = (height // patch) * (width // patch)
        self.patch_embed = nn.Conv2d(in_channels, _EMBED_DIM, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, _EMBED_DIM))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens + 1, _EMBED_DIM))
        self.blocks = nn.Sequential(*(Block(_EMBED_DIM, _HEADS, _MLP_RATIO) for _ in range(_DEPTH)))
        self.norm = nn.LayerNorm(_EMBED_DIM)
        self.head = nn.Linear(_EMBED_DIM, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.cls_token, std=_INIT_STD)
        nn.init.trunc_normal_(self.pos_embed, std=_INIT_STD)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(module.weight, std=_INIT_STD)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


@MODELS.register("vit_tiny")
def vit_tiny(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return VisionTransformer(num_classes, image_shape("vit_tiny", input_shape))
