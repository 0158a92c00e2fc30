"""Trained ResNet-18 and MobileNetV2 for the compression benchmark (optional torch path).

A fidelity budget means little on random weights (see ADR 0003, "Benchmark models"),
so with torch installed (`pip install torch==2.13.0`, the CPU build; never a default
dependency) the benchmark trains both nets on `shapes`, a procedurally drawn 10-class
task, and measures real top-1 accuracy on a labelled set of it. The layers follow
torchvision's definitions (torchvision itself is not used) with a 10-class head.

The task is drawn at a fixed pixel scale: a shape is 24-48 px across at any image size,
and a larger image is a larger canvas holding more shapes (one per grid cell of 64 px or
more). The nets are fully convolutional up to a global average pool, so their features,
and the mix of shape and background that the pool averages, are nearly the same at 64 px
and 224 px: they train on 64 px images (one shape each, cheap on a CPU) and are exported
with 224x224 inputs (nine shapes each). An earlier version drew in image-relative
coordinates, so shapes were 2-3.5 times bigger at 224 px than in training, and the nets
reached only about 20 % top-1 there. BatchNorm statistics are re-estimated on 224 px
images before export. Exported with torch's TorchScript exporter, opset 13.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

CLASSES = ("disc", "square", "triangle", "ring", "cross", "diamond",
           "horizontal stripes", "vertical stripes", "checkerboard", "dots")
# In the cache key: bump it whenever `shapes`, the initialization or RECIPES change, so that
# nets trained otherwise are not reused (none: image-relative shapes; v2: one recipe for both).
TASK = "shapes-v3"
RADIUS_PX = (12.0, 24.0)      # a shape's radius
PERIOD_PX = (6.0, 10.0)       # a texture's period
CELL_PX = 64                  # one shape per cell of at least this size; at least 2 radii
TRAIN_SIZE_PX = 64            # training images: one cell, so one shape
TRAIN_STEPS = 1000


# --- the task -------------------------------------------------------------------------

def shapes(count: int, *, seed: int, size: int = 224) -> tuple[np.ndarray, np.ndarray]:
    """`count` images [count, 3, size, size] (about zero mean, unit scale) and their classes.

    Each image is a coloured gradient with Gaussian noise and, in every cell of a grid,
    one shape (or textured disc) of its class at a random place, size and slight
    rotation, all in one ink colour. Sizes are in pixels, so a shape looks the same at
    every image size: a 64 px image holds one, a 224 px image nine (see the module
    docstring for why).
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), count)
    ramp = (np.arange(size) + 0.5) / size * 2 - 1         # -1 to 1 across the image
    images = np.empty((count, 3, size, size), np.float32)
    for index, label in enumerate(labels):
        mask = draw_mask(int(label), size, rng)
        # The gradient spans the image whatever its size, which keeps a 224 px image at
        # unit scale; its slope, about 0.01 a pixel at 64 px, is small next to the noise.
        background = rng.standard_normal((3, 1, 1)) + rng.normal(0, 0.4, (3, 1, 1)) * ramp[None, :] + \
            rng.normal(0, 0.4, (3, 1, 1)) * ramp[:, None]
        ink = rng.choice((-1.0, 1.0), (3, 1, 1)) * rng.uniform(0.6, 1.4, (3, 1, 1))
        noise = rng.normal(0, rng.uniform(0.1, 0.4), (3, size, size))
        images[index] = background + mask * ink + noise
    return images, labels.astype(np.int64)


def draw_mask(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Where the ink goes in a `size` px image of class `label`: one shape inside each
    grid cell, with the texture period shared by the image."""
    cells = max(1, size // CELL_PX)
    cell = size / cells
    y, x = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
    frequency = 1 / rng.uniform(*PERIOD_PX)
    mask = np.zeros((size, size), bool)
    for row in range(cells):
        for column in range(cells):
            radius, theta = rng.uniform(*RADIUS_PX), rng.uniform(-0.3, 0.3)
            cx = rng.uniform(column * cell + radius, (column + 1) * cell - radius)
            cy = rng.uniform(row * cell + radius, (row + 1) * cell - radius)
            a = (x - cx) * np.cos(theta) + (y - cy) * np.sin(theta)
            b = -(x - cx) * np.sin(theta) + (y - cy) * np.cos(theta)
            mask |= shape_mask(label, a, b, x, y, radius, frequency)
    return mask


def shape_mask(label: int, a: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray, r: float,
               frequency: float) -> np.ndarray:
    """One shape of class `label` and radius `r` px, given pixel coordinates rotated
    about its centre (`a`, `b`); textures run along the image axes (`x`, `y`) at
    `frequency` cycles per pixel."""
    radial = np.sqrt(a * a + b * b)
    if label == 0:
        return radial < r
    if label == 1:
        return np.maximum(np.abs(a), np.abs(b)) < 0.8 * r
    if label == 2:
        return (b > -0.5 * r) & (np.sqrt(3) * a + b < r) & (-np.sqrt(3) * a + b < r)
    if label == 3:
        return (radial < r) & (radial > 0.6 * r)
    if label == 4:
        return ((np.abs(a) < 0.25 * r) & (np.abs(b) < r)) | ((np.abs(b) < 0.25 * r) & (np.abs(a) < r))
    if label == 5:
        return np.abs(a) + np.abs(b) < r
    disc = radial < r
    wave_x, wave_y = np.sin(2 * np.pi * frequency * x), np.sin(2 * np.pi * frequency * y)
    texture = {6: wave_y > 0, 7: wave_x > 0, 8: wave_x * wave_y > 0, 9: (wave_x > 0.5) & (wave_y > 0.5)}[label]
    return disc & texture


# --- the nets (torchvision's layer definitions) -----------------------------------------

class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    def __init__(self, classes: int = len(CLASSES)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        blocks, c_in = [], 64
        for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)]
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1))


def conv_bn(c_in: int, c_out: int, kernel: int, stride: int, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]
    return nn.Sequential(*layers, nn.ReLU6()) if act else nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        layers = [conv_bn(c_in, hidden, 1, 1)] if expand != 1 else []
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden), conv_bn(hidden, c_out, 1, 1, act=False)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetV2(nn.Module):
    def __init__(self, classes: int = len(CLASSES)) -> None:
        super().__init__()
        layers, c_in = [conv_bn(3, 32, 3, 2)], 32
        for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                           (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)):
            for index in range(n):
                layers.append(InvertedResidual(c_in, c, s if index == 0 else 1, t))
                c_in = c
        layers.append(conv_bn(c_in, 1280, 1, 1))
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(1280, classes)
        initialize(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


NETS = {"resnet18": ResNet18, "mobilenet_v2": MobileNetV2}


def initialize(model: nn.Module) -> None:
    """torchvision's MobileNetV2 initialization (He-normal convolutions, unit BatchNorms,
    a small normal head), and the last BatchNorm of every residual branch set to zero so
    that each block starts as the identity (what torchvision's `zero_init_residual` does
    for ResNet). Without the zeros MobileNetV2 stays near chance for most of a short CPU
    run: after 500 steps of 16 at 64 px it scored 26 % top-1 without them and 57 % with
    them. ResNet-18 keeps torch's default initialization: with torchvision's and zeroed
    residual branches it reached 39-47 % at 224 px, where the default reached 93-95 %
    (1000 steps of 16 each)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0, 0.01)
            nn.init.zeros_(module.bias)
    for module in model.modules():
        if isinstance(module, InvertedResidual) and module.residual:
            nn.init.zeros_(module.body[-1][1].weight)       # the projection's BatchNorm


# --- training and export ----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Recipe:
    """How a net is trained: `batch` images of TRAIN_SIZE_PX a step, AdamW with a
    one-cycle learning rate peaking at `lr`."""
    batch: int
    lr: float


# Measured on a 2-core CPU with one thread: TRAIN_STEPS take 8-10 minutes a net, and the
# nets then reach 88-95 % (ResNet-18, over runs and seeds) and 100 % (MobileNetV2) top-1 at 224 px.
RECIPES = {"resnet18": Recipe(batch=16, lr=2e-3), "mobilenet_v2": Recipe(batch=32, lr=4e-3)}


def train(name: str, *, steps: int, batch: int | None = None, seed: int = 0, lr: float | None = None) -> nn.Module:
    """`name` trained for `steps` steps of its recipe (or the `batch` and `lr` given) on
    fresh `shapes` at TRAIN_SIZE_PX, then its BatchNorm statistics re-estimated at 224 px."""
    recipe = RECIPES[name]
    batch, lr = batch or recipe.batch, lr or recipe.lr
    torch.manual_seed(seed)
    model = NETS[name]()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.2)
    model.train()
    started = time.monotonic()
    for step in range(steps):
        images, labels = shapes(batch, seed=seed * 1_000_003 + step, size=TRAIN_SIZE_PX)
        loss = nn.functional.cross_entropy(model(torch.from_numpy(images)), torch.from_numpy(labels))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            logger.warning("train net=%s step=%d/%d loss=%.3f elapsed=%.0fs", name, step + 1, steps,
                           loss.item(), time.monotonic() - started)
    recalibrate_batch_norm(model, seed=seed)
    return model.eval()


def recalibrate_batch_norm(model: nn.Module, *, seed: int, batches: int = 4, batch: int = 16) -> None:
    """Running BatchNorm statistics replaced by their average over 224 px images, the
    size the nets are exported at (a larger canvas has proportionally more border and a
    flatter background gradient than the 64 px training images)."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None            # cumulative average
    model.train()
    with torch.no_grad():
        for index in range(batches):
            model(torch.from_numpy(shapes(batch, seed=seed * 7_919 + 10_000 + index)[0]))


def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of `model` on `images`, in percent."""
    with torch.no_grad():
        predictions = torch.cat([model(torch.from_numpy(images[i:i + 32])).argmax(1)
                                 for i in range(0, len(images), 32)]).numpy()
    return 100.0 * float((predictions == labels).mean())


def export(model: nn.Module, path: Path) -> None:
    """ONNX, opset 13, input "input" [N, 3, 224, 224], output "logits" [N, 10]."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.onnx.export(model.eval(), (torch.zeros(1, 3, 224, 224),), str(partial), opset_version=13,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, dynamo=False)
    partial.replace(path)


def trained_model(name: str, cache: Path, *, steps: int = TRAIN_STEPS, seed: int = 0) -> Path:
    """The exported ONNX file of `name` trained for `steps`, from `cache` when there."""
    path = cache / f"{name}-{TASK}-{steps}steps-seed{seed}.onnx"
    if not path.exists():
        model = train(name, steps=steps, seed=seed)
        images, labels = shapes(256, seed=seed + 424_242)
        logger.warning("trained net=%s accuracy at 224 px on 256 fresh images=%.1f%%", name,
                       accuracy(model, images, labels))
        export(model, path)
    return path
