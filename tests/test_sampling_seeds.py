"""Sampling as practitioners expect (issue 21 item 3): one image per seed whatever the batch, truncation by
resampling, spherical interpolation written as a grid and an animation, per-class grids; the same through
`gansvc sample` and GetSamples (SampleRenderer), with bad input named."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import scipy.stats
import torch
from PIL import Image

from gansvc.cli import main
from gansvc.service.errors import InvalidField
from gansvc.service.messages import pb
from gansvc.service.samples import SampleRenderer
from gansvc.train import Trainer, TrainSpec
from gansvc.train.latents import SamplingError, parse_seeds, seed_latent, seed_latents, slerp, truncation_threshold
from gansvc.train.sampling import draw_interpolation, draw_seeds, generate, open_generator

TINY = {"width": 8, "batch_size": 16, "log_every": 1, "sample_every": 0, "checkpoint_every": 0, "eval_samples": 0,
        "tensorboard": False, "threads": 1, "steps": 2}  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny trained runs: a DCGAN, an MLP (no EMA) and a conditional DCGAN."""
    root = tmp_path_factory.mktemp("seed-runs")
    settings = {"dcgan": {}, "mlp": {"model": "mlp", "mlp_hidden": 32, "ema_decay": 0.0},
                "conditional": {"conditional": True}}  # fmt: skip
    for name, extra in settings.items():
        Trainer(TrainSpec.from_dict({**TINY, **extra}), root / name).run()
    return {name: root / name for name in settings}


def _npz(path):
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def _numpy_slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Shoemake's slerp in float64, written from the formula (the reference)."""
    omega = np.arccos(np.clip(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), -1.0, 1.0))
    return (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)


# ---------------------------------------------------------------------- seeds
def test_parse_seeds_reads_ranges_and_lists_and_names_what_is_wrong():
    assert parse_seeds("0-63") == list(range(64))
    assert parse_seeds(" 1,5, 9-12 ") == [1, 5, 9, 10, 11, 12]
    assert parse_seeds("7") == [7]
    cases = {"5-2": "seeds: 5-2 is empty", "": "seeds: is empty", "a": "not a seed or a range",
             "-3": "not a seed or a range", "1,,2": "not a seed or a range", f"{2**63}": "seeds lie in"}  # fmt: skip
    for text, expected in cases.items():
        with pytest.raises(SamplingError) as caught:
            parse_seeds(text)
        assert expected in str(caught.value) and caught.value.field == "seeds", text
    with pytest.raises(SamplingError, match="more than 1024 seeds"):
        parse_seeds("0-1024", limit=1024)


def test_a_seed_latent_is_torch_randn_from_a_generator_seeded_with_it_alone():
    for seed in (0, 5, 2**40):
        expected = torch.randn(100, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(seed_latent(seed, 100), expected)
    together = seed_latents(range(10), 100)
    # a batch draw from one generator gives other latents: the reason for per-seed generators
    batch = torch.randn(10, 100, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(together, batch)
    assert torch.equal(together[7], seed_latents([7], 100)[0])


@pytest.mark.parametrize("name", ["dcgan", "mlp", "conditional"])
def test_seeds_give_the_same_images_in_any_batch_size_and_company(runs, tmp_path, name):
    outputs = {}
    for batch in (None, 1, 3, 10):
        out = tmp_path / f"b{batch}.npz"
        extra = [] if batch is None else ["--batch-size", str(batch)]
        assert main(["sample", str(runs[name]), "--seeds", "0-9", "-o", str(out), *extra]) == 0
        outputs[batch] = _npz(out)
    reference = outputs[None]
    assert reference["images"].shape == (10, 1, 28, 28) and reference["seeds"].tolist() == list(range(10))
    # the default and --batch-size 1: one forward per image, identical bit for bit
    assert np.array_equal(outputs[1]["images"], reference["images"])
    for batch in (3, 10):
        assert np.array_equal(outputs[batch]["latents"], reference["latents"])
        assert np.abs(outputs[batch]["images"] - reference["images"]).max() <= 1e-5
    # each image is its seed's own: seeds 7,2 drawn alone are rows 7 and 2, bit for bit
    alone = tmp_path / "alone.npz"
    assert main(["sample", str(runs[name]), "--seeds", "7,2", "-o", str(alone)]) == 0
    assert np.array_equal(_npz(alone)["images"], reference["images"][[7, 2]])
    # and they are what the generator makes of the documented latents (an independent forward)
    generator = open_generator(runs[name]).generator
    z = torch.stack([torch.randn(generator.z_dim, generator=torch.Generator().manual_seed(s)) for s in range(10)])
    labels = None if "labels" not in reference else torch.from_numpy(reference["labels"])
    with torch.no_grad():
        direct = (generator(z) if labels is None else generator(z, labels)).clamp(-1, 1).numpy()
    assert np.abs(direct - reference["images"]).max() <= 1e-5


def test_a_conditional_seed_keeps_its_class_whatever_else_is_drawn(runs):
    generator = open_generator(runs["conditional"]).generator
    many = draw_seeds(generator, list(range(20)))
    assert set(many.labels.tolist()) != {int(many.labels[0])}  # classes vary over seeds
    alone = draw_seeds(generator, [13])
    assert int(alone.labels[0]) == int(many.labels[13]) and torch.equal(alone.images[0], many.images[13])
    fixed = draw_seeds(generator, [1, 2, 3], label=4)
    assert fixed.labels.tolist() == [4, 4, 4] and torch.equal(fixed.latents, many.latents[1:4])


def test_per_class_grid_has_a_row_per_class_and_a_latent_per_column(runs, tmp_path):
    generator = open_generator(runs["conditional"]).generator
    drawn = draw_seeds(generator, [3, 8, 11], per_class=True)
    assert drawn.nrow == 3 and drawn.images.shape[0] == 30
    assert drawn.labels.tolist() == [k for k in range(10) for _ in range(3)]
    assert drawn.seeds == [3, 8, 11] * 10
    for k in (0, 6, 9):
        alone = draw_seeds(generator, [3, 8, 11], label=k)
        assert torch.equal(drawn.images[3 * k : 3 * k + 3], alone.images)
    out = tmp_path / "per-class.png"
    assert main(["sample", str(runs["conditional"]), "--seeds", "3,8,11", "--per-class", "-o", str(out)]) == 0
    grid = Image.open(out)
    assert grid.size == (3 * 30 + 2, 10 * 30 + 2)  # 3 columns x 10 rows of 28 px with 2 px padding


# ---------------------------------------------------------------------- truncation
@pytest.mark.parametrize("psi", [0.3, 0.7, 0.95])
def test_truncation_resamples_only_components_beyond_the_threshold(psi):
    tau = truncation_threshold(psi)
    assert tau == pytest.approx(scipy.stats.norm.ppf((1 + psi) / 2), rel=1e-12)
    plain = seed_latents(range(200), 100)
    truncated = seed_latents(range(200), 100, psi)
    assert truncated.abs().max() <= tau
    inside = plain.abs() <= tau
    assert torch.equal(truncated[inside], plain[inside])  # what was within the threshold stays
    replaced = truncated[~inside].double().numpy()
    assert len(replaced) > 100
    # the replacements are N(0, 1) restricted to [-tau, tau] (Kolmogorov-Smirnov against SciPy's truncnorm)
    assert scipy.stats.kstest(replaced, scipy.stats.truncnorm(-tau, tau).cdf).pvalue > 1e-3
    # and so is the whole truncated latent: the share kept is psi
    assert scipy.stats.kstest(truncated.flatten().double().numpy(), scipy.stats.truncnorm(-tau, tau).cdf).pvalue > 1e-3
    assert inside.double().mean().item() == pytest.approx(psi, abs=0.01)
    assert torch.equal(seed_latents(range(200), 100, psi), truncated)  # reproducible


def test_truncation_one_and_unset_leave_samples_unchanged(runs, tmp_path):
    assert math.isinf(truncation_threshold(1.0)) and math.isinf(truncation_threshold(None))
    assert torch.equal(seed_latents(range(5), 64, 1.0), seed_latents(range(5), 64))
    plain, one, cut = tmp_path / "plain.npz", tmp_path / "one.npz", tmp_path / "cut.npz"
    assert main(["sample", str(runs["dcgan"]), "--seeds", "0-5", "-o", str(plain)]) == 0
    assert main(["sample", str(runs["dcgan"]), "--seeds", "0-5", "--truncation", "1", "-o", str(one)]) == 0
    assert main(["sample", str(runs["dcgan"]), "--seeds", "0-5", "--truncation", "0.5", "-o", str(cut)]) == 0
    assert np.array_equal(_npz(plain)["images"], _npz(one)["images"])
    latents = _npz(cut)["latents"]
    assert np.abs(latents).max() <= scipy.stats.norm.ppf(0.75) and not np.array_equal(latents, _npz(plain)["latents"])


def test_truncation_of_the_noise_stream_bounds_every_latent():
    class Echo(torch.nn.Module):  # returns its latent: generate's noise made visible
        z_dim = 8

        def forward(self, z):
            return z

    tau = truncation_threshold(0.4)
    z = generate(Echo(), 300, seed=3, batch_size=64, truncation=0.4)
    assert z.shape == (300, 8) and z.abs().max() <= tau
    plain = generate(Echo(), 300, seed=3, batch_size=64)
    assert torch.equal(plain, generate(Echo(), 300, seed=3, batch_size=64, truncation=1.0))


# ---------------------------------------------------------------------- interpolation
def test_slerp_matches_the_formula_and_keeps_its_ends():
    a, b = seed_latent(3, 100), seed_latent(9, 100)
    path = slerp(a, b, 9)
    assert torch.equal(path[0], a) and torch.equal(path[-1], b)
    a64, b64 = a.double().numpy(), b.double().numpy()
    for i, t in enumerate(np.linspace(0, 1, 9)):
        assert np.abs(path[i].double().numpy() - _numpy_slerp(a64, b64, t)).max() < 1e-5
    # on the unit sphere: unit norm throughout, constant angular speed, the whole arc the angle between a and b
    unit = slerp(a / a.norm(), b / b.norm(), 9).double()
    assert torch.allclose(unit.norm(dim=1), torch.ones(9, dtype=torch.float64), atol=1e-6)
    steps = torch.arccos((unit[1:] * unit[:-1]).sum(1).clamp(-1, 1))
    total = np.arccos(a64 @ b64 / (np.linalg.norm(a64) * np.linalg.norm(b64)))
    assert torch.allclose(steps, torch.full_like(steps, total / 8), atol=1e-4)
    # a straight line sags towards the origin, slerp does not: its middle norm stays near the ends'
    middle = path[4].norm().item()
    assert middle > ((a + b) / 2).norm().item() and abs(middle - a.norm().item()) < 0.2 * a.norm().item()
    with pytest.raises(SamplingError, match="frames"):
        slerp(a, b, 1)


@pytest.mark.parametrize("fmt", ["gif", "webp"])
def test_interpolate_writes_a_grid_and_an_animation_of_its_frames(runs, tmp_path, fmt):
    out, animation = tmp_path / "frames.npz", tmp_path / f"walk.{fmt}"
    assert main(["sample", str(runs["dcgan"]), "--interpolate", "3,9", "--frames", "6", "-o", str(out),
                 "--animation", str(animation)]) == 0  # fmt: skip
    data = _npz(out)
    assert data["images"].shape == (6, 1, 28, 28)
    a64, b64 = seed_latent(3, 100).double().numpy(), seed_latent(9, 100).double().numpy()
    for i, t in enumerate(np.linspace(0, 1, 6)):
        assert np.abs(data["latents"][i] - _numpy_slerp(a64, b64, t)).max() < 1e-5
    ends = tmp_path / "ends.npz"
    assert main(["sample", str(runs["dcgan"]), "--seeds", "3,9", "-o", str(ends)]) == 0
    assert np.array_equal(data["images"][[0, -1]], _npz(ends)["images"])  # the ends are the seeds' own images
    with Image.open(animation) as picture:
        assert picture.format == fmt.upper() and picture.n_frames == 6 and picture.size == (28, 28)
        expected = np.rint((np.clip(data["images"], -1, 1) + 1) * 127.5).astype(np.uint8)[:, 0]
        for index in range(6):
            picture.seek(index)
            frame = np.asarray(picture.convert("L"))
            assert np.abs(frame.astype(int) - expected[index]).max() <= (0 if fmt == "webp" else 2)
    grid = tmp_path / "grid.png"  # -o .png: the frames in a row; the animation beside it as .gif
    assert main(["sample", str(runs["dcgan"]), "--interpolate", "3,9", "--frames", "6", "-o", str(grid)]) == 0
    assert Image.open(grid).size == (6 * 30 + 2, 32) and Image.open(tmp_path / "grid.gif").n_frames == 6


def test_a_conditional_interpolation_keeps_one_class(runs):
    generator = open_generator(runs["conditional"]).generator
    walk = draw_interpolation(generator, 4, 12, 5)
    start = draw_seeds(generator, [4])
    assert walk.labels.tolist() == [int(start.labels[0])] * 5 and torch.equal(walk.images[0], start.images[0])
    assert draw_interpolation(generator, 4, 12, 5, label=2).labels.tolist() == [2] * 5


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize("args, option", [
    (["--seeds", "5-2"], "--seeds: 5-2 is empty"),
    (["--seeds", "0-3", "--truncation", "0"], "--truncation: must be in (0, 1]"),
    (["--seeds", "0-3", "--truncation", "1.5"], "--truncation: must be in (0, 1]"),
    (["--seeds", "0-3", "--truncation", "nan"], "--truncation: must be in (0, 1]"),
    (["--seeds", "0-3", "-n", "4"], "-n:"),
    (["--seeds", "0-3", "--interpolate", "1,2"], "--interpolate:"),
    (["--interpolate", "3"], "--interpolate: got '3'"),
    (["--interpolate", "3,x"], "--interpolate:"),
    (["--interpolate", "3,4", "--frames", "1"], "--frames: got 1"),
    (["--interpolate", "3,4", "--animation", "a.mp4"], "--animation:"),
    (["--seeds", "1", "--frames", "4"], "--frames: only with --interpolate"),
    (["--per-class"], "--per-class: give --seeds"),
    (["--seeds", "1", "--per-class"], "--per-class: the generator is not class-conditional"),
    (["--seeds", "1", "--best"], "--best:"),
    (["--seeds", "1", "--ema"], "--ema:"),
])  # fmt: skip
def test_bad_sampling_options_exit_2_naming_them(runs, tmp_path, capsys, args, option):
    source = runs["mlp"] if "--ema" in args else runs["dcgan"]
    assert main(["sample", str(source), "-o", str(tmp_path / "x.npz"), *args]) == 2
    assert option in capsys.readouterr().err


def test_weights_by_choice_ema_or_gs_own(runs):
    checkpoint = torch.load(runs["dcgan"] / "checkpoints" / "latest.pt", weights_only=True)
    ema, raw = open_generator(runs["dcgan"], ema=True), open_generator(runs["dcgan"], ema=False)
    assert ema.ema and ema.file.name == "generator.pt" and not raw.ema and raw.file.name == "latest.pt"
    for name, value in checkpoint["G"].items():
        if name.endswith("weight"):
            assert torch.equal(raw.generator.state_dict()[name], value)
    averaged = checkpoint["ema"]["model"]
    differs = [n for n in averaged if n.endswith("weight") and not torch.equal(averaged[n], checkpoint["G"][n])]
    assert differs  # the two choices are different weights
    assert open_generator(runs["dcgan"]).ema and not open_generator(runs["mlp"]).ema


# ---------------------------------------------------------------------- GetSamples (the renderer the servicer calls)
def _tensor(answer):
    return np.frombuffer(answer.tensor.data, dtype="<f4").reshape(list(answer.tensor.shape))


def test_get_samples_by_seed_equals_gansvc_sample(runs, tmp_path):
    renderer = SampleRenderer(64 << 20)
    local = tmp_path / "local.npz"
    assert main(["sample", str(runs["conditional"]), "--seeds", "0-9", "--truncation", "0.8", "-o", str(local)]) == 0
    request = pb.GetSamplesRequest(seeds="0-9", truncation=0.8, include_tensor=True)
    answer = renderer.render(runs["conditional"], request)
    assert np.array_equal(_tensor(answer), _npz(local)["images"])
    assert list(answer.seeds) == list(range(10)) and list(answer.labels) == _npz(local)["labels"].tolist()
    assert answer.count == 10
    per_class = renderer.render(runs["conditional"], pb.GetSamplesRequest(seeds="1,2", per_class=True))
    assert list(per_class.labels) == [k for k in range(10) for _ in range(2)] and per_class.count == 20
    walk = renderer.render(runs["dcgan"], pb.GetSamplesRequest(
        interpolate=pb.Interpolation(seed_a=3, seed_b=9, frames=4, animation_format="webp"), include_tensor=True))
    assert walk.animation_format == "webp" and Image.open(io.BytesIO(walk.animation)).n_frames == 4
    ends = renderer.render(runs["dcgan"], pb.GetSamplesRequest(seeds="3,9", include_tensor=True))
    assert np.array_equal(_tensor(walk)[[0, -1]], _tensor(ends))


@pytest.mark.parametrize("request_fields, field, text", [
    ({"seeds": "5-2"}, "seeds", "5-2 is empty"),
    ({"seeds": "0-3", "truncation": 0.0}, "truncation", "must be in (0, 1]"),
    ({"seeds": "0-3", "truncation": 2.0}, "truncation", "must be in (0, 1]"),
    ({"seeds": "0-3", "count": 4}, "count", "by seed"),
    ({"seeds": "0-2000"}, "seeds", "more than 1024"),
    ({"per_class": True}, "per_class", "needs seeds"),
    ({"seeds": "1", "per_class": True}, "per_class", "not class-conditional"),
    ({"seeds": "1", "interpolate": pb.Interpolation(seed_a=1, seed_b=2)}, "interpolate", "not both"),
    ({"interpolate": pb.Interpolation(seed_a=1, seed_b=2, frames=1)}, "interpolate.frames", "got 1"),
    ({"interpolate": pb.Interpolation(seed_a=-1, seed_b=2)}, "interpolate.seed_a", "got -1"),
    ({"interpolate": pb.Interpolation(seed_a=1, seed_b=2, animation_format="mp4")}, "interpolate.animation_format",
     "mp4"),
])  # fmt: skip
def test_get_samples_names_the_bad_field(runs, request_fields, field, text):
    with pytest.raises(InvalidField) as caught:
        SampleRenderer(64 << 20).render(runs["dcgan"], pb.GetSamplesRequest(**request_fields))
    assert caught.value.field == field and text in caught.value.message
