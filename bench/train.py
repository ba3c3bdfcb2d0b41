"""Training speed: gansvc's trainer vs the seeds' training loop, same data, model and batch size, in one run.

The reference is seed 003's MLP GAN script as written: torchvision's FashionMNIST through a
DataLoader (ToTensor + Normalize, shuffle, batch 64), nn.Sigmoid + nn.BCELoss, a second G forward
for the G step. gansvc trains the same network (100 -> 256 -> 256 -> 784 and its D) with the same
loss (bce, non-saturating G), Adam 2e-4, batch 64, no EMA. Both run on the same number of CPU
threads; runs alternate (seed, gansvc, seed, gansvc, ...) and the median is reported, because
this machine's cores are shared. Two rates are given for each: images per wall-clock second
(what a user sees), and images per CPU second of the process (all its threads), which other
processes on a shared machine disturb far less; with --threads 1 the latter is the robust one.

Also reported: images/s of gansvc's default DCGAN recipe (what `gansvc train` runs by default), at the
threads asked for and with all the machine's threads (the default of `gansvc train`).

    .venv/bin/python bench/train.py                 # 1 epoch per run, 3 rounds
    .venv/bin/python bench/train.py --batches 300 --rounds 1 --threads 1
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gansvc.data.datasets import DEBIAN_FASHION_MNIST  # noqa: E402


def torchvision_root(source: Path, folder: Path) -> Path:
    """Return a root where torchvision's FashionMNIST finds the IDX files (it wants them un-gzipped)."""
    raw = folder / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):  # fmt: skip
        if (source / stem).is_file():
            shutil.copy(source / stem, raw / stem)
        else:
            with gzip.open(source / f"{stem}.gz", "rb") as f_in, open(raw / stem, "wb") as f_out:
                shutil.copyfileobj(f_in, f_out)
    return folder


# ---------------------------------------------------------------------- seed 003, as written
class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(nn.Linear(100, 256), nn.ReLU(True), nn.Linear(256, 256), nn.ReLU(True),
                                  nn.Linear(256, 784), nn.Tanh())  # fmt: skip

    def forward(self, input):
        return self.main(input)


class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(nn.Linear(784, 256), nn.ReLU(True), nn.Linear(256, 256), nn.ReLU(True),
                                  nn.Linear(256, 1), nn.Sigmoid())  # fmt: skip

    def forward(self, input):
        return self.main(input)


def seed_loop(root: Path, batches: int) -> tuple[float, float]:
    """Run seed 003's loop for `batches` batches; return (images/s wall, images/CPU-s), DataLoader included."""
    from torchvision import datasets, transforms

    device = torch.device("cpu")
    generator, discriminator = Generator().to(device), Discriminator().to(device)
    criterion = nn.BCELoss()
    optimizer_g = torch.optim.Adam(generator.parameters(), lr=0.0002)
    optimizer_d = torch.optim.Adam(discriminator.parameters(), lr=0.0002)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize([0.5], [0.5])])
    train_loader = torch.utils.data.DataLoader(
        datasets.FashionMNIST(str(root), train=True, download=False, transform=transform), batch_size=64, shuffle=True
    )
    done, images = 0, 0
    start, cpu_start = time.perf_counter(), time.process_time()
    while done < batches:
        for imgs, _ in train_loader:
            imgs = imgs.to(device)
            real_labels = torch.ones(imgs.size(0), 1).to(device)
            fake_labels = torch.zeros(imgs.size(0), 1).to(device)
            optimizer_d.zero_grad()
            real_imgs = imgs.view(imgs.size(0), -1)
            d_real_loss = criterion(discriminator(real_imgs), real_labels)
            z = torch.randn(imgs.size(0), 100).to(device)
            gen_imgs = generator(z).detach()
            d_fake_loss = criterion(discriminator(gen_imgs), fake_labels)
            loss_d = (d_real_loss + d_fake_loss) / 2
            loss_d.backward()
            optimizer_d.step()
            optimizer_g.zero_grad()
            gen_imgs = generator(z)
            loss_g = criterion(discriminator(gen_imgs), real_labels)
            loss_g.backward()
            optimizer_g.step()
            done += 1
            images += imgs.size(0)
            if done >= batches:
                break
    loss_d.item(), loss_g.item()
    return images / (time.perf_counter() - start), images / (time.process_time() - cpu_start)


# ---------------------------------------------------------------------- gansvc
def gansvc_run(spec_overrides: dict, steps: int, threads: int) -> tuple[float, float, float]:
    """Train with gansvc's Trainer; return images/s (wall, in the loop), images/CPU-s, images/s with start-up."""
    from gansvc.train import Trainer, TrainSpec

    spec = TrainSpec.from_dict({
        "dataset": "fashion-mnist", "batch_size": 64, "steps": steps, "log_every": max(1, steps),
        "sample_every": 0, "eval_samples": 0, "checkpoint_every": 0, "tensorboard": False, "threads": threads,
        **spec_overrides,
    })  # fmt: skip
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(spec, run_dir)
        summary = trainer.run()
    images = steps * spec.batch_size * spec.n_critic
    with_startup = images / (summary["train_seconds"] + trainer.setup_seconds)
    return summary["images_per_sec"], images / summary["train_cpu_seconds"], with_startup


MLP_AS_SEED = {"model": "mlp", "loss": "bce", "spectral_norm": False, "ema_decay": 0.0, "lr_g": 2e-4, "lr_d": 2e-4,
               "beta1": 0.9, "beta2": 0.999}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=str(DEBIAN_FASHION_MNIST), help="Fashion-MNIST IDX files")
    parser.add_argument("--batches", type=int, default=937, help="batches per run (937 = one epoch at 64)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is reported")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for both (0 = all cores)")
    parser.add_argument("--dcgan-batches", type=int, default=150, help="batches for the default-DCGAN figure (0 = skip)")
    args = parser.parse_args()
    from gansvc.train.trainer import cpu_threads

    threads = args.threads or cpu_threads()
    torch.set_num_threads(threads)
    print(f"bench/train.py: Fashion-MNIST, batch 64, {args.batches} batches per run, {args.rounds} rounds, "
          f"{threads} CPU thread(s), torch {torch.__version__}")  # fmt: skip
    seed_wall, seed_cpu, our_wall, our_cpu, our_startup = [], [], [], [], []
    with tempfile.TemporaryDirectory() as folder:
        root = torchvision_root(Path(args.data_root), Path(folder))
        for round_index in range(args.rounds):
            wall, cpu = seed_loop(root, args.batches)
            seed_wall.append(wall)
            seed_cpu.append(cpu)
            wall, cpu, with_startup = gansvc_run(MLP_AS_SEED, args.batches, threads)
            our_wall.append(wall)
            our_cpu.append(cpu)
            our_startup.append(with_startup)
            print(f"  round {round_index + 1}: seed loop {seed_wall[-1]:7.0f} images/s ({seed_cpu[-1]:7.0f} per CPU-s)"
                  f"   gansvc {wall:7.0f} images/s ({cpu:7.0f} per CPU-s, {with_startup:.0f} with start-up)")  # fmt: skip
    median = statistics.median
    print(f"MLP GAN (seed 003's model, bce, batch 64), medians of {args.rounds}:")
    print(f"  seed loop: {median(seed_wall):7.0f} images/s ({60000 / median(seed_wall):5.1f} s/epoch), "
          f"{median(seed_cpu):7.0f} images per CPU-second")  # fmt: skip
    print(f"  gansvc:    {median(our_wall):7.0f} images/s ({60000 / median(our_wall):5.1f} s/epoch), "
          f"{median(our_cpu):7.0f} images per CPU-second; {median(our_startup):.0f} images/s counting data loading "
          "and start-up")  # fmt: skip
    print(f"  speed-up: {median(our_wall) / median(seed_wall):.2f}x wall-clock, "
          f"{median(our_cpu) / median(seed_cpu):.2f}x per CPU-second (goal >= 3x)")  # fmt: skip
    if args.dcgan_batches:
        from gansvc.train import TrainSpec

        d = TrainSpec()
        recipe = (f"DCGAN width {d.width}, {d.loss}{' + spectral norm' if d.spectral_norm else ''}, lr_g {d.lr_g:g} "
                  f"lr_d {d.lr_d:g}, EMA {d.ema_decay:g}, batch {d.batch_size}")  # fmt: skip
        # at the threads asked for, then (if that differs) with all the machine's threads, as `gansvc train` runs
        for count in dict.fromkeys((threads, cpu_threads())):
            torch.set_num_threads(count)
            wall, cpu, _ = gansvc_run({}, args.dcgan_batches, count)
            print(f"gansvc default recipe ({recipe}), {count} CPU thread(s): {wall:.0f} images/s "
                  f"({60000 / wall:.0f} s/epoch), {cpu:.0f} images per CPU-second")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
