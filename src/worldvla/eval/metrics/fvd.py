"""Fréchet Video Distance (Unterthiner et al. 2018) over I3D features (SPEC §7).

FVD fits a Gaussian to the I3D embeddings of the real videos and one to those of the
generated videos and reports the Fréchet (2-Wasserstein) distance between them:

    ||mu_r - mu_g||² + Tr(S_r + S_g - 2 (S_r S_g)^½)

Preprocessing, as in the reference code: uint8 frames ``(N, T, H, W, 3)`` are resized to
224×224 (bilinear, per frame), scaled to [-1, 1] and laid out as ``(N, 3, T, 224, 224)``;
the detector (:mod:`worldvla.eval.metrics.i3d`) returns one 400-dim embedding per video.

Requirements and caveats:

- Videos need at least :data:`~worldvla.eval.metrics.i3d.MIN_FRAMES` = 9 frames (the
  I3D's temporal strides); FVD of 1-frame rollouts is not defined. Longer videos are
  embedded whole (the embedding averages over time).
- FVD is a statistic of two *sets*; with fewer videos than feature dimensions the
  covariances are singular, the estimate is biased upwards and noisy. Always report the
  number of videos next to the value, and compare only numbers computed with the same count.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg

from worldvla.errors import DataError
from worldvla.eval.metrics.i3d import RESOLUTION, I3DDetector, load_i3d


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and covariance ``(D, D)`` (unbiased, N - 1) of ``(N, D)`` features."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise DataError(f"need at least 2 feature vectors (N, D) to fit a Gaussian, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    eps: float = 1e-6,
    method: str = "sqrtm",
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``method="sqrtm"`` (default, the route of the reference FID/FVD code): the matrix square
    root of ``sigma1 @ sigma2`` by scipy. For near-singular covariances it can fail or pick
    up imaginary parts from rounding; as in that code the covariances are then offset by
    ``eps * I`` and the root retried, and the remaining (tiny) imaginary part is dropped.

    ``method="eigh"``: the same trace from symmetric eigendecompositions,
    Tr((S1 S2)^½) = Σ sqrt(eig(S1^½ S2 S1^½)) (S1^½ S2 S1^½ is similar to S1 S2 and
    symmetric positive semi-definite); no complex parts, and much faster for 400×400.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (len(mu1), len(mu1)):
        raise DataError(f"mismatched Gaussian statistics: {mu1.shape}, {s1.shape} vs {mu2.shape}, {s2.shape}")
    diff = mu1 - mu2
    if method == "eigh":
        w, u = np.linalg.eigh(s1)
        r1 = (u * np.sqrt(np.clip(w, 0, None))) @ u.T  # S1^½
        tr_covmean = float(np.sqrt(np.clip(np.linalg.eigvalsh(r1 @ s2 @ r1), 0, None)).sum())
    elif method == "sqrtm":
        with warnings.catch_warnings():  # singular products are expected with few videos; handled below
            warnings.simplefilter("ignore", linalg.LinAlgWarning)
            covmean = linalg.sqrtm(s1 @ s2)
        scale = max(1.0, float(np.abs(np.trace(s1)) + np.abs(np.trace(s2))))
        if not np.isfinite(covmean).all() or np.abs(np.imag(covmean)).max() > 1e-3 * scale:
            offset = np.eye(len(s1)) * eps
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", linalg.LinAlgWarning)
                covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
            if not np.isfinite(covmean).all():
                raise DataError("FVD: covariance square root is not finite even with an eps offset")
            if np.abs(np.imag(covmean)).max() > 1e-3 * scale:
                warnings.warn("FVD: large imaginary part in the covariance square root dropped", stacklevel=2)
        tr_covmean = float(np.trace(np.real(covmean)))
    else:
        raise DataError(f"unknown Fréchet distance method {method!r}; expected 'sqrtm' or 'eigh'")
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def preprocess(videos: np.ndarray, resolution: int = RESOLUTION) -> torch.Tensor:
    """uint8 ``(N, T, H, W, 3)`` -> float ``(N, 3, T, S, S)`` in [-1, 1], S = ``resolution``."""
    n, t = videos.shape[:2]
    x = torch.from_numpy(np.ascontiguousarray(videos)).float()
    x = x.reshape(n * t, *videos.shape[2:]).permute(0, 3, 1, 2)  # (N*T, 3, H, W)
    if x.shape[-2:] != (resolution, resolution):
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    x = x / 127.5 - 1.0
    return x.reshape(n, t, 3, resolution, resolution).permute(0, 2, 1, 3, 4).contiguous()  # (N, 3, T, S, S)


def _check(videos: np.ndarray, name: str, min_frames: int) -> None:
    if (
        not isinstance(videos, np.ndarray)
        or videos.dtype != np.uint8
        or videos.ndim != 5
        or videos.shape[-1] != 3
    ):
        got = f"{videos.dtype} {videos.shape}" if isinstance(videos, np.ndarray) else type(videos).__name__
        raise DataError(f"FVD: {name} videos must be a uint8 array (N, T, H, W, 3), got {got}")
    if videos.shape[1] < min_frames:
        raise DataError(
            f"FVD: {name} videos have {videos.shape[1]} frames; the I3D needs at least {min_frames} "
            "(FVD is not defined for shorter rollouts)"
        )
    if len(videos) < 2:
        raise DataError(f"FVD: need at least 2 {name} videos to fit a Gaussian, got {len(videos)}")


@torch.no_grad()
def video_features(
    videos: np.ndarray, detector: I3DDetector, resolution: int = RESOLUTION, batch_size: int = 4
) -> np.ndarray:
    """I3D embeddings ``(N, D)`` of uint8 videos ``(N, T, H, W, 3)``, in batches."""
    _check(videos, "input", detector.min_frames)
    device = next(iter(detector.net.parameters()), torch.empty(0)).device
    out = [
        detector(preprocess(videos[s : s + batch_size], resolution).to(device)).double().cpu()
        for s in range(0, len(videos), batch_size)
    ]
    return torch.cat(out).numpy()


def fvd_from_features(real_features: np.ndarray, fake_features: np.ndarray, method: str = "sqrtm") -> float:
    """FVD between two sets of precomputed embeddings ``(N, D)`` (see :func:`frechet_distance`)."""
    return frechet_distance(*gaussian_stats(real_features), *gaussian_stats(fake_features), method=method)


def fvd(
    real_videos: np.ndarray,
    fake_videos: np.ndarray,
    detector: I3DDetector,
    resolution: int = RESOLUTION,
    batch_size: int = 4,
) -> float:
    """FVD between two sets of uint8 videos ``(N, T, H, W, 3)`` (counts may differ).

    ``resolution`` is 224 for reported numbers (the pretrained I3D requires it); smaller
    values are for tests with a random network.
    """
    _check(real_videos, "real", detector.min_frames)
    _check(fake_videos, "generated", detector.min_frames)
    return fvd_from_features(
        video_features(real_videos, detector, resolution, batch_size),
        video_features(fake_videos, detector, resolution, batch_size),
    )


class FVD:
    """A bound FVD metric: ``FVD(detector)(real, fake) -> float``; ``min_frames`` tells
    callers which rollout lengths it can score."""

    def __init__(self, detector: I3DDetector, resolution: int = RESOLUTION, batch_size: int = 4):
        self.detector = detector
        self.resolution = resolution
        self.batch_size = batch_size
        self.min_frames = detector.min_frames

    def __call__(self, real_videos: np.ndarray, fake_videos: np.ndarray) -> float:
        return fvd(real_videos, fake_videos, self.detector, self.resolution, self.batch_size)


@functools.lru_cache(maxsize=1)
def default_fvd() -> FVD | None:
    """FVD with the I3D found by :func:`~worldvla.eval.metrics.i3d.load_i3d`, or None when no
    weight file is available locally (the metric is then skipped)."""
    try:
        return FVD(load_i3d())
    except DataError:
        return None
