"""`gansvc eval`: score generated images (FID, Inception Score, KID) and print the result as JSON.

    gansvc eval --fake samples.npz                          # against fashion-mnist:test, fmnist-cnn
    gansvc eval --fake samples.npz --precision-recall --bootstrap 200   # + PR/DC, and the FID's 95% interval
    gansvc eval --fake samples/ --real cifar10:test --inception-weights pt_inception-2015-12-05.pth
    gansvc eval --fake samples.pt --real fid_stats_cifar10_train.npz --extractor inception-v3

An .npz holding `labels` next to `images` (what `gansvc sample` writes for a conditional run) is also
scored per class: intra-class FID and, against Fashion-MNIST, the classifier's class agreement.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from gansvc.runtime import registry
from gansvc.runtime.console import UsageError

MAX_BOOTSTRAP = 100_000  # gansvc.metrics.bootstrap.MAX_RESAMPLES (not imported: it loads torch)


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    """Declare the options of `gansvc eval`."""
    parser.add_argument(
        "--fake", required=True, metavar="PATH",
        help="generated images: .npz, .npy, .pt/.pth ([N,C,H,W], [N,H,W,C] or [N,H,W]; uint8 or float) "
        "or a folder of PNG/JPEG images",
    )
    parser.add_argument(
        "--real", default=registry.DEFAULT_REAL, metavar="SPEC",
        help="real images: a data set NAME[:SPLIT] (fashion-mnist:test, mnist:train, cifar10:test, folder:PATH), "
        "a file or folder of images, or a statistics .npz with mu and sigma (default: %(default)s)",
    )
    parser.add_argument(
        "--extractor", default="auto", choices=("auto", *registry.extractor_names()),
        help="feature network; auto = fmnist-cnn for 1x28x28 images, inception-v3 otherwise (default: auto)",
    )
    parser.add_argument(
        "--inception-weights", default=None, metavar="PATH",
        help="FID Inception weights (pytorch-fid's pt_inception-2015-12-05-6726825d.pth); "
        "default $GANSVC_INCEPTION_WEIGHTS",
    )
    parser.add_argument("--data-root", default=None, metavar="DIR", help="folder holding the real data set's files")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    parser.add_argument(
        "--n-real", type=int, default=None, metavar="N", help="score against N real images (a seeded subset)"
    )
    parser.add_argument(
        "--pixel-range", default="-1,1", choices=("-1,1", "0,1"),
        help="range of float pixels in --fake (uint8 files are always 0-255; default: %(default)s)",
    )
    parser.add_argument("--is-splits", type=int, default=10, help="Inception Score splits (default: %(default)s)")
    parser.add_argument("--kid-subsets", type=int, default=100, help="KID subsets (default: %(default)s)")
    parser.add_argument("--kid-subset-size", type=int, default=1000, help="KID subset size (default: %(default)s)")
    parser.add_argument(
        "--precision-recall", action="store_true",
        help="also precision, recall (Kynkaanniemi et al.), density and coverage (Naeem et al.), k = 3, on the "
        "extractor's features (needs real images, not a statistics file)",
    )
    parser.add_argument(
        "--bootstrap", type=int, default=0, metavar="N",
        help="a 95%% confidence interval of the FID from N resamples of the generated images (default: none)",
    )
    parser.add_argument("--output", default=None, metavar="PATH", help="also write the JSON to this file (atomically)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _device(choice: str) -> str:
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(choice)
    except RuntimeError:
        raise UsageError(f"--device {choice!r} is not a device (cpu, cuda, cuda:N, auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {choice}: no CUDA device is available here")
    return choice


def run(name: str, args) -> int:
    """Score the images of --fake against --real; print JSON; return 0 (UsageError for bad input)."""
    from gansvc.data import DatasetNotFound
    from gansvc.metrics.evaluate import evaluate
    from gansvc.metrics.features import extractor_fits
    from gansvc.metrics.image_files import ImageFileError, load_image_set

    for option, value in (("--is-splits", args.is_splits), ("--kid-subsets", args.kid_subsets)):
        if value < 1:
            raise UsageError(f"{option} must be >= 1, got {value}")
    if args.kid_subset_size < 2:
        raise UsageError(f"--kid-subset-size must be >= 2, got {args.kid_subset_size}")
    if not 0 <= args.bootstrap <= MAX_BOOTSTRAP:
        raise UsageError(f"--bootstrap must be in [0, {MAX_BOOTSTRAP}], got {args.bootstrap}")
    if args.n_real is not None and args.n_real < 2:
        raise UsageError(f"--n-real must be >= 2, got {args.n_real}")
    device = _device(args.device)
    try:
        fake = load_image_set(args.fake, args.pixel_range)
    except ImageFileError as error:
        raise UsageError(f"--fake {error}") from None
    except OSError as error:  # a name the file system refuses (too long, no permission, ...)
        raise UsageError(f"--fake {args.fake!r}: {error.strerror or error}") from None
    extractor = args.extractor
    if extractor == "auto":
        extractor = "fmnist-cnn" if extractor_fits("fmnist-cnn", fake.shape[1:]) else "inception-v3"
    try:
        result = evaluate(
            fake, args.real, extractor, data_root=args.data_root, inception_weights=args.inception_weights,
            device=device, n_real=args.n_real, progress=not args.quiet, is_splits=args.is_splits,
            kid_subsets=args.kid_subsets, kid_subset_size=args.kid_subset_size,
            precision_recall=args.precision_recall, bootstrap=args.bootstrap,
        )
    except ImageFileError as error:
        raise UsageError(f"--real {error}") from None
    except (DatasetNotFound, FileNotFoundError, ValueError) as error:
        raise UsageError(str(error)) from None
    except OSError as error:  # a --real, --data-root or weights path the file system refuses
        raise UsageError(f"{error.filename or ''}: {error.strerror or error}") from None
    per_class = _per_class(args, fake, extractor, device)
    report = {
        "fid": result["fid"],
        "fid_samples": result["n_fake"],  # what the FID was computed from (its bias depends on it)
        "is": {"mean": result["is_mean"], "std": result["is_std"]},
        "kid": None if result["kid_mean"] is None else {"mean": result["kid_mean"], "std": result["kid_std"]},
        "n_real": result["n_real"],
        "n_fake": result["n_fake"],
        "extractor": result["extractor"],
        "real": args.real,
        "fake": os.fspath(args.fake),
        **per_class,
    }
    if args.bootstrap:
        report["fid_ci"] = {"low": result["fid_ci_low"], "high": result["fid_ci_high"],
                            "level": result["fid_ci_level"], "resamples": result["fid_bootstrap"],
                            "std": result["fid_bootstrap_std"]}  # fmt: skip
    if args.precision_recall:
        names = ("precision", "recall", "density", "coverage")
        report["prdc"] = None if result["precision"] is None else {**{n: result[n] for n in names}, "k": 3}
        if report["prdc"] is None:
            print("gansvc eval: precision/recall need real feature rows; --real is a statistics file without them",
                  file=sys.stderr)
    text = json.dumps(report, indent=2)
    if args.output:
        from gansvc.atomic import atomic_write_text

        atomic_write_text(args.output, text + "\n")
    print(text, file=sys.stdout)
    return 0


def _per_class(args, fake, extractor: str, device: str) -> dict:
    """Return the per-class scores of --fake when it is an .npz with `labels` (else {})."""
    import numpy as np

    if not str(args.fake).lower().endswith(".npz"):
        return {}
    with np.load(args.fake, allow_pickle=False) as data:
        if "labels" not in data.files:
            return {}
        labels = data["labels"]
    import torch

    from gansvc.metrics.per_class import evaluate_per_class

    if labels.shape != (fake.shape[0],) or labels.dtype.kind not in "iu":
        raise UsageError(f"--fake: `labels` must hold one integer class per image, got {labels.dtype} {labels.shape}")
    try:
        return evaluate_per_class(
            fake, torch.from_numpy(labels.astype("int64")), args.real, extractor, data_root=args.data_root,
            inception_weights=args.inception_weights, device=device, progress=not args.quiet,
        )  # fmt: skip
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(f"per-class scores: {error}") from None
