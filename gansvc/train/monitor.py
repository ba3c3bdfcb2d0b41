"""What a user watches: metrics.jsonl, TensorBoard scalars and images, the loss-curve PNG, and failure warnings."""

from __future__ import annotations

import json
import math
import os
from collections import deque
from pathlib import Path

from gansvc.atomic import atomic_write_bytes


class MetricsLog:
    """Appends one JSON object per line to metrics.jsonl; on resume, drops lines after the resumed step."""

    def __init__(self, path: str | os.PathLike, resume_step: int | None):
        self.path = Path(path)
        self.records: list[dict] = []
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash
                if resume_step is not None and record.get("step", 0) <= resume_step:
                    self.records.append(record)
            # rewrite (atomically) so that steps logged after the checkpoint, which will be redone, vanish
            atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in self.records).encode())
        self._file = open(self.path, "a", encoding="utf-8")

    def append(self, record: dict) -> None:
        """Write one record (flushed, so a reader sees whole lines)."""
        self.records.append(record)
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Close the file."""
        self._file.close()


class TensorBoard:
    """Scalars and sample images for `tensorboard --logdir RUN_DIR/tensorboard`; a no-op when disabled."""

    def __init__(self, folder: str | os.PathLike, enabled: bool, purge_step: int | None):
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(folder), purge_step=purge_step)

    def scalars(self, prefix: str, values: dict, step: int) -> None:
        """Log each finite number in values as prefix/name."""
        if self.writer is None:
            return
        for name, value in values.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(f"{prefix}/{name}", value, step)

    def image(self, tag: str, grid_hwc, step: int) -> None:
        """Log a uint8 H x W x C image."""
        if self.writer is not None:
            self.writer.add_image(tag, grid_hwc, step, dataformats="HWC")

    def flush(self) -> None:
        """Write pending events to disk."""
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        if self.writer is not None:
            self.writer.close()


def plot_loss_curve(records: list[dict], path: str | os.PathLike, title: str = "") -> Path | None:
    """Draw D and G loss (and FID where evaluated) against the step into a PNG; return its path (None if no data)."""
    train = [r for r in records if r.get("kind") == "train"]
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt

    evals = [r for r in records if r.get("kind") == "eval" and "fid" in r]
    figure, axes = plt.subplots(1, 2 if evals else 1, figsize=(11 if evals else 7, 4), squeeze=False)
    ax = axes[0][0]
    steps = [r["step"] for r in train]
    ax.plot(steps, [r["d_loss"] for r in train], label="D loss")
    ax.plot(steps, [r["g_loss"] for r in train], label="G loss")
    ax.set_xlabel("generator step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title or "losses")
    if evals:
        ax2 = axes[0][1]
        ax2.plot([r["step"] for r in evals], [r["fid"] for r in evals], "o-", color="C2")
        ax2.set_xlabel("generator step")
        ax2.set_ylabel("FID")
        ax2.set_title("FID (lower is better)")
        ax2.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return atomic_write_bytes(path, buffer.getvalue())


def plot_points(points, path: str | os.PathLike, centers=None, title: str = "") -> bytes:
    """Draw 2-D points (and the true mode centers) as a scatter PNG; write it atomically; return the bytes."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(4, 4))
    xy = points.detach().cpu().float().numpy()
    ax.scatter(xy[:, 0], xy[:, 1], s=2, alpha=0.4, color="C0", label="generated")
    if centers is not None:
        c = centers.cpu().numpy()
        ax.scatter(c[:, 0], c[:, 1], s=30, marker="x", color="C3", label="true modes")
    ax.set_xlim(-3, 3)
    ax.set_ylim(-3, 3)
    ax.set_aspect("equal")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    data = buffer.getvalue()
    atomic_write_bytes(path, data)
    return data


class FailureWatch:
    """Turns logged statistics into warnings: D overpowering G, mode collapse. Each code fires once per episode.

    d_overpowering: over the last `window` log points D classifies (almost) every sample right
    (accuracy >= 0.99), its loss is near its floor (bce/hinge: < 0.1; the Wasserstein critic has
    none) and the G loss has risen — the pattern seed 004 describes (D loss -> 0, G loss exploding).
    """

    def __init__(self, loss: str, window: int = 5):
        self.loss = loss
        self.window = window
        self.history: deque[dict] = deque(maxlen=window)
        self.active: set[str] = set()

    def check_train(self, values: dict) -> list[tuple[str, str]]:
        """Return (code, message) warnings raised by this log point's values."""
        self.history.append(values)
        if len(self.history) < self.window:
            return []
        first, last = self.history[0], self.history[-1]
        accurate = all(v["d_accuracy"] >= 0.99 for v in self.history)
        low_loss = self.loss == "wasserstein" or all(v["d_loss"] < 0.1 for v in self.history)
        rising = last["g_loss"] > first["g_loss"] + 0.1 * max(1.0, abs(first["g_loss"]))
        return self._episode(
            "d_overpowering",
            accurate and low_loss and rising,
            f"D overpowers G: D accuracy {last['d_accuracy']:.3f}, D loss {last['d_loss']:.4f}, G loss rising "
            f"{first['g_loss']:.3f} -> {last['g_loss']:.3f} over the last {self.window} logs; try spectral_norm, "
            "a lower lr_d, label smoothing (real_label 0.9) or a gradient penalty",
        )

    def check_coverage(self, covered: int, total: int, what: str) -> list[tuple[str, str]]:
        """Return a mode_collapse warning when fewer than half of `total` classes/modes are covered."""
        return self._episode(
            "mode_collapse",
            covered * 2 < total,
            f"mode collapse: generated samples cover only {covered} of {total} {what}; try a lower lr_g, "
            "spectral_norm, a gradient penalty or more D steps (n_critic)",
        )

    def check_diversity(self, ratio: float) -> list[tuple[str, str]]:
        """Return a mode_collapse warning when fixed-noise samples are far less varied than real data."""
        return self._episode(
            "mode_collapse",
            ratio < 0.25,
            f"mode collapse? low sample diversity: samples from different noise differ {ratio:.2f}x as much as real samples "
            "do",
            key="low_diversity",
        )

    def _episode(self, code: str, condition: bool, message: str, key: str = "") -> list[tuple[str, str]]:
        key = key or code
        if condition and key not in self.active:
            self.active.add(key)
            return [(code, message)]
        if not condition:
            self.active.discard(key)
        return []
