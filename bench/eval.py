"""FID of two image folders end to end: `gansvc eval --extractor inception-v3` vs a pytorch-fid-style pipeline.

Both run in this one process on the same PNG folders and the same Inception weights (a pytorch-fid-layout
file built from a seeded random network: the real weights cannot be downloaded here), so the features are
identical and only the pipelines differ:
- gansvc       `gansvc eval --fake A --real B --extractor inception-v3` (FID + IS + KID), a fresh statistics cache
- pytorch-fid  its pipeline restated: a DataLoader over the files (PIL, convert('RGB'), ToTensor; batch 50,
               pytorch-fid's default workers), the same network's pool3 features, np.mean / np.cov and
               scipy.linalg.sqrtm (FID only)
Times are wall-clock seconds of one run each; the FID values are printed side by side.

    python bench/eval.py [--n 200] [--configs grey28,rgb64] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from threads import pin_threads_from_argv  # noqa: E402  (bench/threads.py, beside this script)

pin_threads_from_argv()

import numpy as np  # noqa: E402
import scipy.linalg  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

CONFIGS = {"grey28": (1, 28), "rgb64": (3, 64)}


def write_folder(folder: Path, n: int, channels: int, size: int, seed: int, brightness: float = 0.0) -> None:
    """Write n smooth random PNGs (blurred noise, so that Inception sees structure)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        low = rng.uniform(0, 255, (channels, size // 4 + 1, size // 4 + 1))
        image = np.kron(low, np.ones((4, 4)))[:, :size, :size] + rng.normal(brightness, 12, (channels, size, size))
        pixels = np.clip(image, 0, 255).astype(np.uint8)
        Image.fromarray(pixels[0] if channels == 1 else pixels.transpose(1, 2, 0)).save(folder / f"{i:05d}.png")


def random_inception_weights(path: Path) -> None:
    """A seeded, randomly initialised FID Inception saved in pytorch-fid's layout (as the tests build it)."""
    from gansvc.metrics import inception

    torch.manual_seed(0)
    net = inception.build_fid_inception()
    # Calibrate the batch norms on random images (cumulative averages), else the random network's pool3
    # features collapse to a constant and every FID is ~1e-14.
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
    with torch.no_grad():
        inception.FIDInceptionV3(net.train())(torch.rand(8, 3, 64, 64))
    torch.save({k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}, path)


class ImagePathDataset(torch.utils.data.Dataset):
    """pytorch-fid's dataset: every file opened with PIL, converted to RGB, ToTensor'd ([0, 1])."""

    def __init__(self, files):
        self.files = files

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        image = np.asarray(Image.open(self.files[i]).convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(image.transpose(2, 0, 1).copy())


def pytorch_fid_style(folder_a: Path, folder_b: Path, weights: Path, device: str) -> float:
    """FID as pytorch-fid's fid_score computes it, with the same network."""
    from gansvc.metrics.inception import load_fid_inception

    model = load_fid_inception(weights, device)
    workers = min(len(os.sched_getaffinity(0)), 8)  # pytorch-fid's default num_workers

    def statistics(folder: Path):
        files = sorted(folder.glob("*.png"))
        loader = torch.utils.data.DataLoader(ImagePathDataset(files), batch_size=50, shuffle=False,
                                             drop_last=False, num_workers=workers)
        rows = []
        with torch.no_grad():
            for batch in loader:
                rows.append(model(batch.to(device))[0].cpu().numpy())
        features = np.concatenate(rows)
        return np.mean(features, axis=0), np.cov(features, rowvar=False)

    (mu1, s1), (mu2, s2) = statistics(folder_a), statistics(folder_b)
    covmean = scipy.linalg.sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * 1e-6
        covmean = scipy.linalg.sqrtm((s1 + offset).dot(s2 + offset))
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


def gansvc_eval(folder_a: Path, folder_b: Path, weights: Path, device: str, cache: Path) -> dict:
    """`gansvc eval` in this process, with a fresh statistics cache; return its JSON report."""
    import contextlib
    import io
    import json

    from gansvc import cli

    os.environ["GANSVC_CACHE_DIR"] = str(cache)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["eval", "--fake", str(folder_a), "--real", str(folder_b), "--extractor", "inception-v3",
                         "--inception-weights", str(weights), "--device", device, "--quiet"])
    if code != 0:
        raise SystemExit(f"gansvc eval failed with exit code {code}")
    return json.loads(out.getvalue())


def main() -> None:
    """Run both pipelines per configuration and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="images per folder (default: %(default)s)")
    parser.add_argument("--configs", default="grey28,rgb64", help=f"comma-separated from {', '.join(CONFIGS)}")
    parser.add_argument("--threads", type=int, default=None, help="torch/BLAS threads (set before imports)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}, "
          f"n = {args.n} vs {args.n}")
    print("| images | gansvc eval (s) | pytorch-fid style (s) | speed-up | FID gansvc | FID pytorch-fid | rel. diff |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="gansvc-bench-eval-") as tmp:
        root = Path(tmp)
        weights = root / "pt_inception-random.pth"
        random_inception_weights(weights)
        for name in args.configs.split(","):
            channels, size = CONFIGS[name]
            fake, real = root / name / "fake", root / name / "real"
            write_folder(fake, args.n, channels, size, seed=1)
            write_folder(real, args.n, channels, size, seed=2, brightness=20.0)
            start = time.perf_counter()
            report = gansvc_eval(fake, real, weights, args.device, root / name / "cache")
            ours = time.perf_counter() - start
            start = time.perf_counter()
            theirs_fid = pytorch_fid_style(fake, real, weights, args.device)
            theirs = time.perf_counter() - start
            rel = abs(report["fid"] - theirs_fid) / abs(theirs_fid)
            print(f"| {args.n} {name} | {ours:.1f} | {theirs:.1f} | {theirs / ours:.2f}x | {report['fid']:.6g} | "
                  f"{theirs_fid:.6g} | {rel:.1e} |", flush=True)


if __name__ == "__main__":
    main()
