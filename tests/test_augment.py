"""DiffAugment / ADA: differentiable, identity at p = 0, reproducible, exact resume, and the transforms' meaning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gansvc.train.augment import Augmenter, parse_policy


def _images(n=6, c=3, h=16, w=12, seed=0):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1


def test_identity_at_p_zero_and_without_policy():
    x = _images()
    assert Augmenter("translation,cutout,color", p=0.0)(x) is x
    assert Augmenter((), p=1.0)(x) is x


@pytest.mark.parametrize("policy", ["translation", "cutout", "color", "translation,cutout,color"])
def test_differentiable_with_respect_to_the_images(policy):
    x = _images(n=3, h=8, w=8).requires_grad_()
    aug = Augmenter(policy, p=0.7, seed=3)
    state = aug.state_dict()

    def f(x):
        aug.load_state_dict(state)  # the same random draws for every evaluation gradcheck makes
        return aug(x)

    assert torch.autograd.gradcheck(f, (x,))


def test_same_seed_same_augmentation_and_resume_continues_exactly():
    x = _images()
    a, b = Augmenter("translation,cutout,color", p=0.5, seed=1), Augmenter("translation,cutout,color", p=0.5, seed=1)
    assert torch.equal(a(x), b(x))
    state = a.state_dict()
    expected = a(x)
    c = Augmenter("translation,cutout,color", p=0.5, seed=99)
    c.load_state_dict(state)
    assert torch.equal(c(x), expected)
    assert not torch.equal(Augmenter("translation", p=1.0, seed=2)(x), Augmenter("translation", p=1.0, seed=5)(x))


def test_translation_is_a_zero_filled_shift():
    x = _images(n=20, c=1, h=16, w=16)
    out = Augmenter("translation", p=1.0, seed=4)(x)
    for i in range(x.shape[0]):  # each output is x shifted by some (dy, dx) with |d| <= 2, zeros elsewhere
        found = False
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                shifted = np.zeros((16, 16))
                src = x[i, 0].numpy()
                ys, xs = slice(max(0, dy), 16 + min(0, dy)), slice(max(0, dx), 16 + min(0, dx))
                shifted[ys, xs] = src[max(0, -dy):16 - max(0, dy), max(0, -dx):16 - max(0, dx)]
                found |= np.array_equal(out[i, 0].numpy(), shifted)
        assert found, i


def test_cutout_zeroes_one_square_and_keeps_the_rest():
    x = _images(n=10, c=2, h=16, w=16).abs() + 0.1  # no zeros of its own
    out = Augmenter("cutout", p=1.0, seed=5)(x)
    for i in range(10):
        zero = (out[i, 0] == 0).numpy()
        assert 0 < zero.sum() <= 64 and np.array_equal(zero, (out[i, 1] == 0).numpy())
        rows, cols = np.nonzero(zero.any(1))[0], np.nonzero(zero.any(0))[0]
        assert zero[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # one rectangle
        assert torch.equal(out[i][:, ~torch.from_numpy(zero)], x[i][:, ~torch.from_numpy(zero)])


def test_p_is_the_share_of_augmented_images():
    x = _images(n=4000, c=1, h=4, w=4)
    out = Augmenter("color", p=0.3, seed=6)(x)
    changed = (out != x).flatten(1).any(1).double().mean().item()
    assert abs(changed - 0.3) < 0.03


def test_ada_raises_p_when_d_overfits_and_lowers_it_otherwise():
    aug = Augmenter("translation", p=0.0, ada_target=0.6, interval=4, ada_images=1000)
    for _ in range(40):
        aug.observe(torch.ones(64), batch_images=64)  # sign(D(real)) = 1 > 0.6: overfitting
    assert aug.p == pytest.approx(min(1.0, 10 * 64 * 4 / 1000))
    for _ in range(8):
        aug.observe(-torch.ones(64), batch_images=64)
    assert aug.p == pytest.approx(1.0 - 2 * 64 * 4 / 1000)


def test_bad_policy_and_probability_are_refused():
    with pytest.raises(ValueError, match="zoom"):
        parse_policy("translation,zoom")
    with pytest.raises(ValueError, match="probability"):
        Augmenter("color", p=1.5)
