"""`gansvc plugins check NAME`: run an installed plugin through one tiny training step and one evaluation batch
on the CPU and report shape, range and determinism problems before a real job is submitted.

Exit code 0: no problem found; 1: problems (each printed); 2: usage (an unknown name, a bad option).
"""

from __future__ import annotations

import argparse
import json

from gansvc.runtime import plugins
from gansvc.runtime.console import UsageError

KINDS = tuple(plugins.GROUPS)  # models, datasets, extractors
BATCH = 4


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    """Add `gansvc plugins check`'s arguments."""
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = sub.add_parser("check", help="run a plugin through one training step and one evaluation batch on the CPU")
    check.add_argument("name", help="the plugin's name (a model, data set or extractor)")
    check.add_argument("--kind", choices=KINDS, help="which group, when the name is in several")
    check.add_argument("--model-args", default="{}", metavar="JSON", help="model factory keyword arguments")
    check.add_argument("--dataset-args", default="{}", metavar="JSON", help="data set factory keyword arguments")
    check.add_argument("--data-shape", default="1,32,32", metavar="C,H,W",
                       help="sample shape a model is built for (default 1,32,32; 2 for points)")  # fmt: skip
    check.add_argument("--num-classes", type=int, default=0, help="classes a model is built for (default 0)")
    check.add_argument("--z-dim", type=int, default=64, help="noise dimensions of a model (default 64)")
    sub.add_parser("list", help="list the installed plugins")


def run(name: str, args) -> int:
    """Run `gansvc plugins ACTION`; return the exit code."""
    if args.action == "list":
        for kind in KINDS:
            for plugin in plugins.plugin_names(kind):
                print(f"{kind}\t{plugin}\t{plugins.distribution_of(kind, plugin)}")
        return 0
    kind = _kind(args.name, args.kind)
    report = Report(kind, args.name)
    if kind == "models":
        check_model(report, args.name, _json("--model-args", args.model_args), _shape(args.data_shape),
                    args.num_classes, args.z_dim)  # fmt: skip
    elif kind == "datasets":
        check_dataset(report, args.name, _json("--dataset-args", args.dataset_args))
    else:
        check_extractor(report, args.name)
    return report.finish()


def _kind(name: str, kind: str | None) -> str:
    found = [k for k in KINDS if name in plugins.plugin_names(k)]
    if kind is not None:
        if kind not in found:
            raise UsageError(f"no installed {kind} plugin {name!r} (installed: "
                             f"{', '.join(plugins.plugin_names(kind)) or 'none'})")  # fmt: skip
        return kind
    if not found:
        every = ", ".join(f"{k}: {', '.join(plugins.plugin_names(k)) or 'none'}" for k in KINDS)
        raise UsageError(f"no installed plugin {name!r} ({every})")
    if len(found) > 1:
        raise UsageError(f"{name!r} is a plugin of several kinds ({', '.join(found)}): choose one with --kind")
    return found[0]


def _json(option: str, text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"{option}: expected a JSON object, got {text!r} ({error})") from None
    if not isinstance(value, dict):
        raise UsageError(f"{option}: expected a JSON object, got {text!r}")
    return value


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise UsageError(f"--data-shape: expected C,H,W or 2, got {text!r}") from None
    if shape != (2,) and (len(shape) != 3 or min(shape) < 1):
        raise UsageError(f"--data-shape: expected C,H,W (each >= 1) or 2, got {text!r}")
    return shape


class Report:
    """Collects what a check found; prints each finding as it comes."""

    def __init__(self, kind: str, name: str):
        self.label = f"{plugins.GROUPS[kind]}:{name}"
        self.problems: list[str] = []

    def ok(self, text: str) -> None:
        """Record a passed check."""
        print(f"ok       {text}")

    def problem(self, text: str) -> None:
        """Record a problem."""
        self.problems.append(text)
        print(f"PROBLEM  {text}")

    def finish(self) -> int:
        """Print the verdict; return 0 without problems, else 1."""
        if self.problems:
            print(f"{self.label}: {len(self.problems)} problem(s)")
            return 1
        print(f"{self.label}: no problems found")
        return 0


def _same(a, b) -> bool:
    import torch

    return a.shape == b.shape and bool(torch.equal(a, b))


# ---------------------------------------------------------------------- models
def check_model(report: Report, name: str, model_args: dict, data_shape, num_classes: int, z_dim: int) -> None:
    """Build the model twice from one seed, run one D and one G step, draw an evaluation batch twice."""
    import torch

    from gansvc.losses import discriminator_loss, generator_loss
    from gansvc.models.plugin import build_plugin_models, check_range
    from gansvc.runtime.plugins import PluginArgumentError, PluginError
    from gansvc.train.sampling import generate

    from types import SimpleNamespace

    Spec = SimpleNamespace(model=name, z_dim=z_dim, model_args=model_args)  # the fields build_plugin_models reads
    try:
        torch.manual_seed(0)
        G, D = build_plugin_models(Spec, data_shape, num_classes)
        torch.manual_seed(0)
        G2, _ = build_plugin_models(Spec, data_shape, num_classes)
    except (PluginError, PluginArgumentError) as error:
        report.problem(str(error))
        return
    report.ok(f"built for data_shape {list(data_shape)}, num_classes {num_classes}, z_dim {z_dim}, "
              f"model_args {json.dumps(model_args)}")  # fmt: skip
    first, second = G.state_dict(), G2.state_dict()
    if first.keys() == second.keys() and all(_same(first[k], second[k]) for k in first):
        report.ok("the same seed builds the same generator weights")
    else:
        report.problem("two builds after torch.manual_seed(0) gave different generator weights: initialise from "
                       "torch's global generator (gansvc seeds it), not from an unseeded source")  # fmt: skip
    rng = torch.Generator().manual_seed(0)
    labels = torch.randint(num_classes, (BATCH,), generator=rng) if num_classes else None
    z = torch.randn(BATCH, z_dim, generator=rng)
    real = torch.rand(BATCH, *data_shape, generator=rng) * 2 - 1
    try:
        # one training step, as the trainer takes it (bce loss, Adam)
        opt_g, opt_d = (torch.optim.Adam(m.parameters(), lr=1e-4) for m in (G, D))
        fake = G(z, labels)
        logits = D(torch.cat([real, fake.detach()]), None if labels is None else torch.cat([labels, labels]))
        d_loss = discriminator_loss(logits[:BATCH].float(), logits[BATCH:].float(), "bce").loss
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        g_loss = generator_loss(D(fake, labels).float(), "bce").loss
        opt_g.zero_grad()
        g_loss.backward()
        opt_g.step()
    except PluginError as error:
        report.problem(str(error))
        return
    report.ok(f"generator gives {list(fake.shape)}, discriminator logits [{BATCH}] (after flattening)")
    d_loss, g_loss = d_loss.detach(), g_loss.detach()
    losses = torch.stack([d_loss, g_loss])
    if torch.isfinite(losses).all():
        report.ok(f"one training step: D loss {float(d_loss):.4f}, G loss {float(g_loss):.4f}")
    else:
        report.problem(f"one training step gave non-finite losses (D {float(d_loss)}, G {float(g_loss)})")
    no_grad = [n for n, p in G.named_parameters() if p.requires_grad and p.grad is None]
    if no_grad:
        report.problem(f"generator parameters without a gradient after the G step: {', '.join(no_grad[:5])}")
    else:
        report.ok("every generator parameter got a gradient")
    try:  # an evaluation batch, twice from one seed
        if labels is None:
            once, twice = generate(G, BATCH, seed=1), generate(G, BATCH, seed=1)
        else:
            with torch.no_grad():
                G.eval()
                once, twice = G(z, labels), G(z, labels)
        if len(data_shape) == 3:
            check_range(name, once)
    except PluginError as error:
        report.problem(str(error))
        return
    if _same(once, twice):
        report.ok("an evaluation batch: the same noise gives the same samples (eval mode)")
    else:
        report.problem("in eval mode the same noise gave different samples: no randomness of its own in forward "
                       "(dropout, unseeded noise) outside training")  # fmt: skip
    if len(data_shape) == 3:
        report.ok(f"samples in [{float(once.min()):.3f}, {float(once.max()):.3f}] within [-1, 1]")


# ---------------------------------------------------------------------- data sets
def check_dataset(report: Report, name: str, dataset_args: dict) -> None:
    """Call the factory for both splits (twice for train): shapes, dtypes, labels, classes, determinism."""
    import torch

    from gansvc.runtime.plugins import PluginArgumentError, PluginError, call_factory, load_factory

    try:
        factory = load_factory("datasets", name)
        results = {}
        for split in ("train", "test", "train"):
            found = call_factory("datasets", name, factory, {"split": split, "root": None, "image_size": 0},
                                 dict(dataset_args), "dataset_args", "dataset")  # fmt: skip
            results.setdefault(split, []).append(found)
    except (PluginError, PluginArgumentError) as error:
        report.problem(str(error))
        return
    for split in ("train", "test"):
        first = _sample_items(report, split, results[split][0])
        if first is None:
            continue
        if split == "train":
            again = _sample_items(report, split, results[split][1], quiet=True)
            if again is not None and all(_same(a[0], b[0]) and a[1] == b[1] for a, b in zip(first, again)):
                report.ok("train: a second call gives the same images and labels")
            else:
                report.problem("train: a second call gave different images or labels (seed the data set)")
    del torch


def _sample_items(report: Report, split: str, found, quiet: bool = False):
    """Return [(image, label)] of the first and last items, checked; None after a problem."""
    import torch

    say = (lambda text: None) if quiet else report.ok
    class_names = getattr(found, "class_names", None)
    if class_names is not None and not isinstance(class_names, (list, tuple)):
        report.problem(f"{split}: class_names is {type(class_names).__name__}, expected a list or None")
        return None
    if hasattr(found, "images"):
        images, labels = found.images, getattr(found, "labels", None)
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4 or not len(images):
            got = f"{images.dtype} {list(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
            report.problem(f"{split}: images are {got}, expected uint8 [N, C, H, W] with N >= 1")
            return None
        if labels is not None and (not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64
                                   or labels.shape != (images.shape[0],)):  # fmt: skip
            report.problem(f"{split}: labels must be int64 [{images.shape[0]}] or None")
            return None
        if images.shape[1] not in (1, 3):
            report.problem(f"{split}: {images.shape[1]} channels; gansvc's image code takes 1 or 3")
        items = [(images[i], None if labels is None else int(labels[i])) for i in (0, len(images) - 1)]
        say(f"{split}: in memory, {len(images)} images of {list(images.shape[1:])}, "
            f"{'unlabelled' if labels is None else 'labelled'}")  # fmt: skip
    elif hasattr(found, "__getitem__") and hasattr(found, "__len__"):
        count = len(found)
        if count < 1:
            report.problem(f"{split}: the Dataset is empty")
            return None
        try:
            items = [found[i] for i in (0, count - 1)]
        except Exception as error:  # noqa: BLE001 - a third party's code
            report.problem(f"{split}: reading an item raised {type(error).__name__}: {error}")
            return None
        for image, _ in items:
            if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8 or image.dim() != 3:
                got = f"{image.dtype} {list(image.shape)}" if isinstance(image, torch.Tensor) else type(image).__name__
                report.problem(f"{split}: an item's image is {got}, expected a uint8 tensor [C, H, W]")
                return None
        if items[0][0].shape != items[1][0].shape:
            shapes = f"{list(items[0][0].shape)}, {list(items[1][0].shape)}"
            report.problem(f"{split}: items have different shapes ({shapes})")
            return None
        say(f"{split}: streamed Dataset, {count} items of {list(items[0][0].shape)}")
    else:
        report.problem(f"{split}: the factory returned {type(found).__name__}, expected an object with images or a "
                       "map-style Dataset")  # fmt: skip
        return None
    if class_names:
        for _, label in items:
            if label is not None and not 0 <= int(label) < len(class_names):
                report.problem(f"{split}: label {label} outside the {len(class_names)} class_names")
                return None
    return items


# ---------------------------------------------------------------------- extractors
def check_extractor(report: Report, name: str) -> None:
    """Load the extractor on the CPU and score one batch twice: attributes, shapes, finiteness, determinism."""
    import torch

    from gansvc.metrics.features import PluginExtractor
    from gansvc.runtime.plugins import PluginArgumentError, PluginError

    try:
        net = PluginExtractor(name, "cpu")
    except (PluginError, PluginArgumentError) as error:
        report.problem(str(error))
        return
    report.ok(f"input_size {net.input_size}, input_channels {net.input_channels}, {net.feature_dim} features"
              + (f", {net.num_classes} logits (IS enabled)" if net.has_logits else ", no logits (no IS)"))
    rng = torch.Generator().manual_seed(0)
    for channels in sorted({1, net.input_channels}):
        images = torch.rand(BATCH, channels, 28, 28, generator=rng) * 2 - 1
        try:
            once, twice = net(images), net(images)
        except (PluginError, ValueError) as error:
            report.problem(f"{channels}-channel 28x28 images: {error}")
            continue
        if not all(torch.isfinite(t).all() for t in once):
            report.problem(f"{channels}-channel images: non-finite features or logits")
        elif all(_same(a, b) for a, b in zip(once, twice)):
            report.ok(f"{channels}-channel 28x28 images (resized to {net.input_size}): features "
                      f"{list(once[0].shape)}, the same twice")  # fmt: skip
        else:
            report.problem(f"{channels}-channel images: the same images gave different features")
