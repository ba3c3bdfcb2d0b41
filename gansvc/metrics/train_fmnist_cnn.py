"""Train the shipped fmnist-cnn classifier on the Fashion-MNIST training set (seeded, a few CPU minutes).

    python -m gansvc.metrics.train_fmnist_cnn            # writes gansvc/metrics/weights/fmnist_cnn.pt

The same seed, epochs and thread count give the same weights. The test-set accuracy is printed and
stored in the checkpoint; tests/test_metrics_features.py checks it is at least 90 %.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from gansvc.atomic import atomic_torch_save
from gansvc.data import load_images
from gansvc.images import uint8_to_unit_range
from gansvc.metrics.fmnist_cnn import ARCHITECTURE, WEIGHTS_PATH, FashionMNISTClassifier


@torch.no_grad()
def accuracy(
    model: FashionMNISTClassifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000
) -> float:
    """Return the share of `images` (uint8 [N, 1, 28, 28]) that `model` classifies as `labels`."""
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        logits = model(uint8_to_unit_range(images[start : start + batch_size]))
        correct += int((logits.argmax(1) == labels[start : start + batch_size]).sum())
    return correct / len(images)


def train(
    epochs: int = 3, seed: int = 0, batch_size: int = 128, lr: float = 3e-3, data_root=None, progress: bool = True
) -> tuple[FashionMNISTClassifier, float]:
    """Return (classifier trained on the Fashion-MNIST train set, its test-set accuracy)."""
    torch.manual_seed(seed)
    train_set = load_images("fashion-mnist", "train", data_root)
    test_set = load_images("fashion-mnist", "test", data_root)
    model = FashionMNISTClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(train_set) / batch_size)
    total_steps = epochs * steps_per_epoch
    # One-cycle (warm-up, then cosine decay): reaches > 90 % test accuracy in 2-3 epochs.
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps, pct_start=0.15)
    order_rng = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train_set), generator=order_rng)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, file=sys.stderr)
        running = 0.0
        for step in bar:
            index = order[step * batch_size : (step + 1) * batch_size]
            images = uint8_to_unit_range(train_set.images[index])
            # Horizontal flips are label-preserving for clothes and cost nothing.
            flip = torch.rand(len(index), generator=order_rng) < 0.5
            images[flip] = images[flip].flip(-1)
            loss = F.cross_entropy(model(images), train_set.labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
            bar.set_postfix(loss=f"{running:.3f}")
        test_acc = accuracy(model, test_set.images, test_set.labels)
        print(f"epoch {epoch + 1}: train loss {running:.4f}, test accuracy {test_acc:.4f}", file=sys.stderr)
    return model.eval(), test_acc


def main(argv: list[str] | None = None) -> int:
    """Train and save the classifier; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of the one-cycle schedule")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (fixed for reproducibility)")
    parser.add_argument("--data-root", default=None, help="folder with the Fashion-MNIST IDX files")
    parser.add_argument("--out", type=Path, default=WEIGHTS_PATH)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model, test_acc = train(args.epochs, args.seed, args.batch_size, args.lr, args.data_root)
    checkpoint = {
        "architecture": ARCHITECTURE,
        # float32 weights; BatchNorm's num_batches_tracked is dropped (not used in eval mode).
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items() if "num_batches" not in k},
        "test_accuracy": test_acc,
        "train_config": {
            "epochs": args.epochs, "seed": args.seed, "batch_size": args.batch_size, "lr": args.lr,
            "threads": args.threads, "torch": str(torch.__version__),
        },
    }
    atomic_torch_save(checkpoint, args.out)
    size = args.out.stat().st_size
    print(
        f"saved {args.out} ({size / 1e6:.2f} MB): test accuracy {test_acc:.4f}, "
        f"{time.perf_counter() - started:.0f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
