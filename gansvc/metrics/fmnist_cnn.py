"""The small Fashion-MNIST classifier shipped with gansvc: FID features and IS class probabilities.

Three strided convolutions (28 -> 14 -> 7 -> 4) and a 128-unit hidden layer: about 3 M
multiply-adds per image, so the 60 000 training images pass through it in seconds on a CPU,
and its weights (0.37 M parameters, float32) stay well under 2 MB inside the package.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


ARCHITECTURE = "fmnist-cnn-v1"
FEATURE_DIM = 128
NUM_CLASSES = 10
WEIGHTS_PATH = Path(__file__).resolve().parent / "weights" / "fmnist_cnn.pt"


def _conv_block(c_in: int, c_out: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
    )


class FashionMNISTClassifier(nn.Module):
    """Images [N, 1, 28, 28] in [-1, 1] -> logits [N, 10]; `features` gives the 128-d penultimate layer."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_block(1, 32, 4),  # 28 -> 14
            _conv_block(32, 64, 4),  # 14 -> 7
            _conv_block(64, 128, 3),  # 7 -> 4
            nn.Flatten(),
            nn.Linear(128 * 4 * 4, FEATURE_DIM),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Return the penultimate activations [N, 128] (after ReLU), the FID features."""
        return self.body(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return the class logits [N, 10]."""
        return self.head(self.body(images))

    def features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (features [N, 128], logits [N, 10]) from one forward pass."""
        hidden = self.body(images)
        return hidden, self.head(hidden)


def load_classifier(path: str | Path | None = None, device: str | torch.device = "cpu") -> FashionMNISTClassifier:
    """Return the shipped (or the given) fmnist-cnn classifier in eval mode on `device`."""
    path = Path(path) if path is not None else WEIGHTS_PATH
    if not path.is_file():
        raise FileNotFoundError(
            f"fmnist-cnn weights not found at {path}: train them with "
            "`python -m gansvc.metrics.train_fmnist_cnn` (a few minutes on a CPU)"
        )
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or checkpoint.get("architecture") != ARCHITECTURE:
        raise ValueError(f"{path} is not an {ARCHITECTURE} checkpoint (no matching 'architecture' entry)")
    model = FashionMNISTClassifier()
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval().requires_grad_(False).to(device)
