"""Small PyTorch models of the shapes users convert, built deterministically in code."""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["ConvNet", "MobileNetBlock", "BasicBlock", "DeepResNet", "randomize_bn", "calibrate_bn"]


class ConvNet(nn.Module):
    """The seed's MNIST ConvNet: Conv2d(1,16,3,pad 1) → BatchNorm2d → ReLU → reshape → Linear."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.layer1 = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, stride=1, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
        )
        self.fc = nn.Linear(28 * 28 * 16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer1(x)
        out = out.reshape(out.size(0), -1)
        return self.fc(out)


class MobileNetBlock(nn.Module):
    """MobileNet-v1 style: depthwise 3×3 + BN + ReLU6, pointwise 1×1 + BN + ReLU6."""

    def __init__(self, in_ch: int = 8, out_ch: int = 16, stride: int = 2) -> None:
        super().__init__()
        self.stride = stride
        self.dw = nn.Conv2d(in_ch, in_ch, 3, stride=stride, padding=1, groups=in_ch, bias=False)
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.relu1 = nn.ReLU6()
        self.pw = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu2 = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.dw(x)))
        return self.relu2(self.bn2(self.pw(x)))


class BasicBlock(nn.Module):
    """A ResNet basic block with an identity shortcut (the residual add is functional)."""

    def __init__(self, ch: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + x)


class DeepResNet(nn.Module):
    """A stem conv, ``blocks`` basic blocks, global average pool and a classifier.

    With 25 blocks it is as deep as ResNet-50 (51 convolutions): the depth at
    which float32 round-off between two frameworks accumulates most.
    """

    def __init__(self, blocks: int = 25, ch: int = 16, in_ch: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_ch, ch, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(ch)
        self.stem_relu = nn.ReLU()
        self.blocks = nn.Sequential(*[BasicBlock(ch) for _ in range(blocks)])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem_relu(self.stem_bn(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def calibrate_bn(model: nn.Module, x: torch.Tensor, *, seed: int = 0) -> nn.Module:
    """Set every BatchNorm's running statistics to the batch statistics of ``x`` (as training
    would, without the optimiser) and give its affine parameters trained-like values."""
    gen = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m in bns:
            m.weight.copy_(torch.rand(m.num_features, generator=gen) * 0.5 + 0.5)
            m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration passes
        model.train()
        model(x)
        for m in bns:
            m.momentum = 0.1
    return model.eval()


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm trained-like statistics (small variances), deterministically.

    Stands in for training in tests: with the init statistics (mean 0, var 1)
    several conversion bugs are invisible.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) * 0.045 + 0.005)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
    return model
