"""LPIPS: the learned perceptual image distance of Zhang et al. (2018) (SPEC §7).

Architecture (the paper's "lin" variant, version 0.1):

1. Images in [-1, 1] are shifted and scaled per channel (the "scaling layer", which maps
   them to the ImageNet statistics the trunk was trained on).
2. An ImageNet classifier trunk (AlexNet by default, or VGG16) gives five feature maps,
   taken after the ReLUs: AlexNet conv1..conv5; VGG16 relu1_2, relu2_2, relu3_3, relu4_3,
   relu5_3.
3. Each feature vector is divided by its L2 norm over channels (unit length per pixel).
4. The squared difference of the two images' unit features goes through a learned 1×1
   convolution with one output and no bias (weights are non-negative), is averaged over
   space, and the five layer scores are summed.

The distance is 0 for identical images, symmetric and non-negative; the usual report
multiplies it by 100. Frames of 64×64 are accepted (AlexNet's last maps are 3×3 then).

Weights: the trunk is the torchvision ImageNet state dict (``alexnet-owt-7be5be79.pth`` or
``vgg16-397923af.pth``: keys ``features.<i>.weight/bias``; the classifier keys are ignored)
and the heads are the LPIPS package's ``alex.pth`` / ``vgg.pth`` (keys
``lin<k>.model.1.weight`` of shape ``(1, C_k, 1, 1)``). Nothing is downloaded: the files are
looked up as described in :func:`load_lpips` and ``docs/metrics.md``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from worldvla.errors import DataError
from worldvla.eval.metrics.image import StepScores, check_videos
from worldvla.utils.io import atomic_path

# torchvision's AlexNet `features` and the 0-based indices of the ReLUs LPIPS taps.
# Convs are (in, out, kernel, stride, padding).
_ALEX_LAYERS: list[tuple[int, int, int, int, int] | str] = [
    (3, 64, 11, 4, 2),
    "relu",
    "pool",
    (64, 192, 5, 1, 2),
    "relu",
    "pool",
    (192, 384, 3, 1, 1),
    "relu",
    (384, 256, 3, 1, 1),
    "relu",
    (256, 256, 3, 1, 1),
    "relu",
]
_ALEX_TAPS = (1, 4, 7, 9, 11)
# torchvision's VGG16 `features` (configuration "D"): channels per conv, "M" = max pool.
_VGG16_CFG: list[int | str] = [
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
]
_VGG_TAPS = (3, 8, 15, 22, 29)

NETS = ("alex", "vgg")
CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}
TRUNK_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
HEADS_FILES = {"alex": "alex.pth", "vgg": "vgg.pth"}
TRUNK_URLS = {
    "alex": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    "vgg": "https://download.pytorch.org/models/vgg16-397923af.pth",
}
HEADS_SOURCE = "the LPIPS package (pip install lpips; file lpips/weights/v0.1/{name})"
# Weight-file lookup, shared with the I3D loader.
WEIGHTS_DIR_ENV = "WORLDVLA_METRIC_WEIGHTS"
LPIPS_TRUNK_ENV = "WORLDVLA_LPIPS_TRUNK"
LPIPS_HEADS_ENV = "WORLDVLA_LPIPS_HEADS"

# The LPIPS scaling layer: (x - shift) / scale maps [-1, 1] inputs to ImageNet statistics.
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


def resolve_weight_file(
    explicit: str | Path | None, env_var: str, filename: str, extra_dirs: tuple[Path, ...] = ()
) -> tuple[Path | None, list[str]]:
    """Find a weight file: the explicit path, then ``$env_var``, then ``$WORLDVLA_METRIC_WEIGHTS/filename``,
    then ``extra_dirs/filename``. Returns the path (None if absent) and the places looked at.

    An explicit path that does not exist is an error, not a fall-through: the user asked for it.
    """
    if explicit is not None:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise DataError(f"{p}: weight file not found")
        return p, [str(p)]
    looked: list[str] = []
    candidates: list[Path] = []
    if os.environ.get(env_var):
        candidates.append(Path(os.environ[env_var]).expanduser())
    else:
        looked.append(f"${env_var} (unset)")
    if os.environ.get(WEIGHTS_DIR_ENV):
        candidates.append(Path(os.environ[WEIGHTS_DIR_ENV]).expanduser() / filename)
    else:
        looked.append(f"${WEIGHTS_DIR_ENV}/{filename} (unset)")
    candidates += [d / filename for d in extra_dirs]
    for c in candidates:
        looked.append(str(c))
        if c.is_file():
            return c, looked
    return None, looked


def _torch_hub_checkpoints() -> Path:
    """Where torchvision caches its downloads (``$TORCH_HOME/hub/checkpoints``)."""
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch"
    )
    return Path(home) / "hub" / "checkpoints"


def _build_features(net: str) -> tuple[nn.Sequential, tuple[int, ...]]:
    """The torchvision ``features`` trunk (same module indices, so state-dict keys match)."""
    layers: list[nn.Module] = []
    if net == "alex":
        for spec in _ALEX_LAYERS:
            if spec == "relu":
                layers.append(nn.ReLU())
            elif spec == "pool":
                layers.append(nn.MaxPool2d(kernel_size=3, stride=2))
            else:
                c_in, c_out, k, stride, pad = spec
                layers.append(nn.Conv2d(c_in, c_out, k, stride=stride, padding=pad))
        return nn.Sequential(*layers), _ALEX_TAPS
    c_in = 3
    for v in _VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c_in, int(v), 3, padding=1), nn.ReLU()]
            c_in = int(v)
    return nn.Sequential(*layers), _VGG_TAPS


class Trunk(nn.Module):
    """ImageNet trunk returning the five LPIPS feature maps; ``features.<i>`` as in torchvision."""

    def __init__(self, net: str = "alex"):
        super().__init__()
        self.features, self.taps = _build_features(net)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x)
                if i == self.taps[-1]:
                    break
        return out


class LPIPS(nn.Module):
    """Perceptual distance between image batches; ``forward(x, y)`` with float ``(N, 3, H, W)``
    in [-1, 1] returns ``(N,)`` distances."""

    def __init__(self, net: str = "alex"):
        super().__init__()
        if net not in NETS:
            raise DataError(f"unknown LPIPS trunk {net!r}; expected one of {NETS}")
        self.net = net
        self.trunk = Trunk(net)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in CHANNELS[net])
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx = self.trunk((x - self.shift) / self.scale)
        fy = self.trunk((y - self.shift) / self.scale)
        total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for a, b, lin in zip(fx, fy, self.lins):
            a = a / (a.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)  # unit length over channels
            b = b / (b.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((a - b) ** 2).mean(dim=(1, 2, 3))  # (N, 1, h, w) -> (N,)
        return total


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated download or another format: say which file
        raise DataError(f"{path}: cannot read a PyTorch state dict ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict):
        raise DataError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def _load_into(module: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or wrong:
        detail = f"missing {missing[:4]}" if missing else f"shape mismatch {wrong[:3]}"
        raise DataError(f"{path}: not the expected weight layout ({detail})")
    module.load_state_dict({k: state[k] for k in own})


def load_lpips(
    trunk_path: str | Path | None = None,
    heads_path: str | Path | None = None,
    net: str = "alex",
    random_init: bool = False,
    seed: int = 0,
) -> LPIPS:
    """Build LPIPS and load the standard weights, in eval mode.

    Files are found (in order) at the given paths, at ``$WORLDVLA_LPIPS_TRUNK`` /
    ``$WORLDVLA_LPIPS_HEADS``, under ``$WORLDVLA_METRIC_WEIGHTS`` by their standard names, and
    for the trunk in torchvision's download cache (``$TORCH_HOME/hub/checkpoints``). A missing
    file raises :class:`DataError` naming it and where to get it.

    ``random_init`` skips the files: a seeded random trunk and random non-negative heads
    (like trained ones), for tests and for code paths that only need the shapes.
    """
    if net not in NETS:
        raise DataError(f"unknown LPIPS trunk {net!r}; expected one of {NETS}")
    if random_init:
        g = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LPIPS(net)
        with torch.no_grad():
            for lin in model.lins:
                lin.weight.copy_(torch.rand(lin.weight.shape, generator=g) / lin.weight.shape[1])
        return model.eval()
    trunk_file, trunk_looked = resolve_weight_file(
        trunk_path, LPIPS_TRUNK_ENV, TRUNK_FILES[net], (_torch_hub_checkpoints(),)
    )
    heads_file, heads_looked = resolve_weight_file(heads_path, LPIPS_HEADS_ENV, HEADS_FILES[net])
    problems = []
    if trunk_file is None:
        problems.append(
            f"the {net} ImageNet trunk {TRUNK_FILES[net]} (from {TRUNK_URLS[net]}); looked at: "
            + ", ".join(trunk_looked)
        )
    if heads_file is None:
        problems.append(
            f"the LPIPS linear heads {HEADS_FILES[net]} (from {HEADS_SOURCE.format(name=HEADS_FILES[net])}); "
            "looked at: " + ", ".join(heads_looked)
        )
    if problems:
        raise DataError("LPIPS weights not found: " + "; ".join(problems))
    assert trunk_file is not None and heads_file is not None
    model = LPIPS(net)
    trunk_state = {k: v for k, v in _load_state(trunk_file).items() if k.startswith("features.")}
    _load_into(model.trunk, trunk_state, trunk_file)
    heads = _load_state(heads_file)
    keys = [f"lin{k}.model.1.weight" for k in range(len(model.lins))]
    if any(k not in heads for k in keys):
        raise DataError(
            f"{heads_file}: not an LPIPS heads file (expected keys {keys}, got {sorted(heads)[:6]})"
        )
    _load_into(model.lins, {f"{k}.weight": heads[key] for k, key in enumerate(keys)}, heads_file)
    return model.eval()


def save_lpips_weights(model: LPIPS, trunk_path: str | Path, heads_path: str | Path) -> None:
    """Write ``model`` in the two standard layouts (torchvision trunk, LPIPS heads), atomically."""
    with atomic_path(trunk_path) as tmp:
        torch.save({f"features.{k}": v for k, v in model.trunk.features.state_dict().items()}, tmp)
    with atomic_path(heads_path) as tmp:
        torch.save({f"lin{k}.model.1.weight": lin.weight.detach() for k, lin in enumerate(model.lins)}, tmp)


def _to_unit_range(frames: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 ``(M, H, W, 3)`` -> float ``(M, 3, H, W)`` in [-1, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 3, 1, 2).float()
    return t / 127.5 - 1.0


@torch.no_grad()
def lpips_distance(model: LPIPS, a: np.ndarray, b: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """LPIPS of uint8 image batches ``(M, H, W, 3)``: ``(M,)`` distances (not ×100)."""
    if a.shape != b.shape or a.ndim != 4 or a.shape[-1] != 3 or a.dtype != np.uint8 or b.dtype != np.uint8:
        raise DataError(
            f"LPIPS needs two uint8 (M, H, W, 3) batches of one shape, got {a.shape} and {b.shape}"
        )
    device = next(model.parameters()).device
    out = [
        model(
            _to_unit_range(a[s : s + batch_size], device), _to_unit_range(b[s : s + batch_size], device)
        ).cpu()
        for s in range(0, len(a), batch_size)
    ]
    return torch.cat(out).double().numpy()


def video_lpips(model: LPIPS, real: np.ndarray, pred: np.ndarray, batch_size: int = 32) -> StepScores:
    """Per-frame LPIPS of uint8 videos ``(N, T, H, W, 3)`` (not ×100)."""
    check_videos(real, pred)
    n, t = real.shape[:2]
    d = lpips_distance(
        model, real.reshape(n * t, *real.shape[2:]), pred.reshape(n * t, *pred.shape[2:]), batch_size
    )
    return StepScores(d.reshape(n, t))  # (N*T,) -> (N, T)


@functools.lru_cache(maxsize=1)
def default_lpips() -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
    """AlexNet LPIPS from the standard files if they can be found, else None (metric skipped).

    Returns ``f(a, b)`` over uint8 ``(M, H, W, 3)`` batches giving ``(M,)`` distances.
    """
    try:
        model = load_lpips()
    except DataError:
        return None
    return functools.partial(lpips_distance, model)
