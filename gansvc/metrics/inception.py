"""The FID Inception-v3 (pytorch-fid's port of the 2015 TensorFlow graph), loaded from a local file.

The network is torchvision's Inception3 with the blocks TensorFlow computes differently patched in
(average pooling without the padded zeros; max pooling in the last block), and with 1008 classes,
so the state_dict keys are those of pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`. That file
(or any file with the same keys) is named by the user: `--inception-weights PATH` or the
GANSVC_INCEPTION_WEIGHTS environment variable. Nothing is downloaded.

torchvision is imported only here, so the fmnist-cnn path works without it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gansvc.runtime.registry import INCEPTION_WEIGHTS_ENV as WEIGHTS_ENV
FEATURE_DIM = 2048
NUM_CLASSES = 1008
INPUT_SIZE = 299


def _torchvision_inception():
    try:
        from torchvision.models import inception as tv_inception
    except Exception as error:  # ImportError, or a torchvision that does not match torch
        raise RuntimeError(f"the inception-v3 extractor needs torchvision, which did not import ({error})") from None
    return tv_inception


def tensorflow_average_pool(x: torch.Tensor) -> torch.Tensor:
    """The 2015 graph's 3×3 average pooling (stride 1, padded): over the real pixels only, padded zeros not counted."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def _fid_blocks():
    """Return the FID-patched Inception block classes (built lazily: they subclass torchvision's)."""
    tv = _torchvision_inception()

    class FIDInceptionA(tv.InceptionA):
        """InceptionA whose pooling branch averages over the real pixels only, as TensorFlow does."""

        pool = staticmethod(tensorflow_average_pool)

        def forward(self, x):
            branch1x1 = self.branch1x1(x)
            branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
            branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            branch_pool = self.branch_pool(self.pool(x))
            return torch.cat([branch1x1, branch5x5, branch3x3dbl, branch_pool], 1)

    class FIDInceptionC(tv.InceptionC):
        """InceptionC with TensorFlow's average pooling (padded zeros not counted)."""

        pool = staticmethod(tensorflow_average_pool)

        def forward(self, x):
            branch1x1 = self.branch1x1(x)
            branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            branch7x7dbl = self.branch7x7dbl_1(x)
            for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
                branch7x7dbl = layer(branch7x7dbl)
            branch_pool = self.branch_pool(self.pool(x))
            return torch.cat([branch1x1, branch7x7, branch7x7dbl, branch_pool], 1)

    class FIDInceptionE1(tv.InceptionE):
        """The first InceptionE block with TensorFlow's average pooling (padded zeros not counted)."""

        pool = staticmethod(tensorflow_average_pool)

        def forward(self, x):
            branch1x1 = self.branch1x1(x)
            branch3x3 = self.branch3x3_1(x)
            branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
            branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            branch3x3dbl = torch.cat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1)
            branch_pool = self.branch_pool(self.pool(x))
            return torch.cat([branch1x1, branch3x3, branch3x3dbl, branch_pool], 1)

    class FIDInceptionE2(FIDInceptionE1):
        """The last InceptionE block: the 2015 graph max-pools here (where the paper average-pools)."""

        pool = staticmethod(lambda x: F.max_pool2d(x, kernel_size=3, stride=1, padding=1))

    return FIDInceptionA, FIDInceptionC, FIDInceptionE1, FIDInceptionE2


def build_fid_inception() -> nn.Module:
    """Return an untrained FID Inception-v3 (torchvision Inception3 with the FID blocks, 1008 classes)."""
    tv = _torchvision_inception()
    block_a, block_c, block_e1, block_e2 = _fid_blocks()
    # init_weights=False: the weights come from a file; skipping scipy's truncated-normal init saves seconds.
    net = tv.Inception3(num_classes=NUM_CLASSES, aux_logits=False, transform_input=False, init_weights=False)
    net.Mixed_5b = block_a(192, pool_features=32)
    net.Mixed_5c = block_a(256, pool_features=64)
    net.Mixed_5d = block_a(288, pool_features=64)
    net.Mixed_6b = block_c(768, channels_7x7=128)
    net.Mixed_6c = block_c(768, channels_7x7=160)
    net.Mixed_6d = block_c(768, channels_7x7=160)
    net.Mixed_6e = block_c(768, channels_7x7=192)
    net.Mixed_7b = block_e1(1280)
    net.Mixed_7c = block_e2(2048)
    return net


class FIDInceptionV3(nn.Module):
    """Images in [0, 1] [N, 3, H, W] (or grey [N, 1, H, W]) -> (pool3 features [N, 2048], unbiased logits [N, 1008]).

    As pytorch-fid: resized to 299×299 (bilinear, align_corners=False), scaled to [-1, 1]. The logits
    are the 1008-way classifier without its bias, as the original Inception Score code used them.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (pool3 features, logits without bias) of images in [0, 1]."""
        x = F.interpolate(images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = 2.0 * x - 1.0
        if x.shape[1] == 1:  # grey: repeated to RGB after resizing (the same values, a third of the resizing)
            x = x.expand(-1, 3, -1, -1).contiguous(memory_format=torch.channels_last)
        net = self.net
        for layer in (net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3):
            x = layer(x)
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = net.Conv2d_4a_3x3(net.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (net.Mixed_5b, net.Mixed_5c, net.Mixed_5d, net.Mixed_6a, net.Mixed_6b, net.Mixed_6c,
                      net.Mixed_6d, net.Mixed_6e, net.Mixed_7a, net.Mixed_7b, net.Mixed_7c):
            x = block(x)
        features = F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)
        return features, features @ net.fc.weight.T


def fold_batch_norms_(model: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm that follows a bias-free convolution into that convolution; return model.

    torchvision's BasicConv2d computes relu(bn(conv(x))); with the batch norm's running statistics fixed
    that is relu(conv'(x)) with W' = W γ/√(var + ε) and bias β - mean γ/√(var + ε) — the same function
    (computed in float64, then rounded once) with one pass over each activation fewer. For inference only.
    """
    for module in model.modules():
        conv, bn = getattr(module, "conv", None), getattr(module, "bn", None)
        if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and conv.bias is None):
            continue
        if bn.training or not bn.track_running_stats:
            raise ValueError("fold_batch_norms_ needs batch norms in eval mode with running statistics")
        scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
        weight = conv.weight.detach().double() * scale.reshape(-1, 1, 1, 1)
        bias = bn.bias.detach().double() - bn.running_mean.double() * scale
        conv.weight = nn.Parameter(weight.to(conv.weight.dtype), requires_grad=False)
        conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)
        module.bn = nn.Identity()
    return model


def _conv_relu_kernel():
    """oneDNN's convolution with a fused ReLU (the op torch.compile's CPU backend emits), or None where absent."""
    if not torch.backends.mkldnn.is_available():
        return None
    return getattr(torch.ops.mkldnn, "_convolution_pointwise", None)


class _FusedConvReLU(nn.Module):
    """relu(conv(x)) of a folded BasicConv2d, as one oneDNN call for CPU float32 inference.

    The convolution writes each output once with the ReLU applied, where the eager pair wrote it and then read
    and rewrote it: the same function (the ReLU is exact; oneDNN may pick another summation order for the fused
    op, a float32 rounding), 3-7 % of the network's CPU time in alternating timings. The kernel has no backward,
    so it runs only with autograd off (the extractor's inference mode); anything else (gradients, other dtypes
    or devices) takes the eager pair.
    """

    def __init__(self, conv: nn.Conv2d, kernel) -> None:
        super().__init__()
        self.conv = conv
        self.kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        if x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled():
            return self.kernel(x, conv.weight, conv.bias, list(conv.padding), list(conv.stride), list(conv.dilation),
                               conv.groups, "relu", [], "")
        return F.relu(conv(x), inplace=True)


def fuse_conv_relus_(model: nn.Module) -> nn.Module:
    """Replace each folded BasicConv2d (conv with bias, batch norm folded away) by a fused conv + ReLU; return model.

    Run after fold_batch_norms_. For inference only; a no-op where oneDNN's fused kernel is not built in.
    """
    kernel = _conv_relu_kernel()
    if kernel is None:
        return model
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            conv = getattr(child, "conv", None)
            if (isinstance(conv, nn.Conv2d) and isinstance(getattr(child, "bn", None), nn.Identity)
                    and conv.bias is not None and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)):
                setattr(parent, name, _FusedConvReLU(conv, kernel))
    return model


def _no_pool(x: torch.Tensor) -> torch.Tensor:
    return x


class _ConvThenAveragePool(nn.Module):
    """A pooling branch's folded 1×1 BasicConv2d with the block's average pool moved after its convolution.

    relu(conv(pool(x))) = relu(pool(conv(x))): the pool is a convex combination of pixels (its weights sum to 1
    with the padded zeros not counted, so the bias passes through it) and commutes with a 1×1 convolution (both
    linear). The pool then runs on the convolution's 32–192 output channels instead of its 192–1 280 input
    channels: ~5 % of the network's CPU time, the same function to float rounding.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(tensorflow_average_pool(self.conv(x)), inplace=True)


def pool_after_convolution_(model: nn.Module) -> nn.Module:
    """Move each average-pooling branch's pool after its 1×1 convolution (see _ConvThenAveragePool); return model.

    Run after fold_batch_norms_ (a batch norm between convolution and pool would not commute). For inference.
    """
    for block in list(model.modules()):
        branch = getattr(block, "branch_pool", None)
        conv = getattr(branch, "conv", None)
        if (getattr(type(block), "pool", None) is tensorflow_average_pool and isinstance(conv, nn.Conv2d)
                and isinstance(getattr(branch, "bn", None), nn.Identity) and conv.kernel_size == (1, 1)
                and conv.stride == (1, 1) and conv.padding == (0, 0) and conv.dilation == (1, 1) and conv.groups == 1):
            block.branch_pool = _ConvThenAveragePool(conv)
            block.pool = _no_pool
    return model


def resolve_weights_path(path: str | os.PathLike | None = None) -> Path:
    """Return the Inception weights file: `path`, else $GANSVC_INCEPTION_WEIGHTS; error if neither exists."""
    chosen = path if path else os.environ.get(WEIGHTS_ENV)
    if not chosen:
        raise FileNotFoundError(
            "the inception-v3 extractor needs the FID Inception weights (pytorch-fid's "
            "pt_inception-2015-12-05-6726825d.pth): pass --inception-weights PATH or set "
            f"{WEIGHTS_ENV}; nothing is downloaded"
        )
    chosen = Path(chosen).expanduser()
    if not chosen.is_file():
        raise FileNotFoundError(f"inception weights file {str(chosen)!r} does not exist")
    return chosen


def load_fid_inception(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> FIDInceptionV3:
    """Return the FID Inception-v3 with the weights of `path` (see resolve_weights_path), in eval mode."""
    weights = resolve_weights_path(path)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors of all kinds: a corrupt or foreign file
        raise ValueError(f"{weights}: not a PyTorch weights file ({type(error).__name__}: {error})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{weights}: expected a state_dict (a mapping of names to tensors)")
    net = build_fid_inception()
    expected = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    given = {k for k in state if not k.endswith("num_batches_tracked")}
    missing, unexpected = sorted(set(expected) - given), sorted(given - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{weights}: not the FID Inception layout (pytorch-fid's pt_inception-2015-12-05): "
            f"{len(missing)} keys missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise ValueError(f"{weights}: {key} has shape {list(state[key].shape)}, expected {list(tensor.shape)}")
    net.load_state_dict(state, strict=False)  # num_batches_tracked may be absent (unused in eval mode)
    return FIDInceptionV3(net).eval().requires_grad_(False).to(device)
