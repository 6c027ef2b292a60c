"""Per-frame PSNR and SSIM over video batches (SPEC §7).

World-model rollouts are compared frame by frame with the real frames. Every function takes
two uint8 video batches ``(N, T, H, W, 3)`` (``T`` = rollout step) and returns a
:class:`StepScores`: the score of every frame ``(N, T)``, its mean per rollout step ``(T,)``
(to plot quality against the rollout horizon) and the overall mean.

Conventions (the ones used for the paper's world-model table):

- Images are compared in RGB with data range 255 (uint8). Internally they are scaled to
  [0, 1] with data range 1, which is the same quantity.
- PSNR is computed per frame and then averaged (not the PSNR of the mean squared error).
  Identical frames have infinite PSNR; it is capped at :data:`PSNR_CAP_DB` so means stay
  finite (the image tokenizer's PSNR uses the same cap).
- SSIM is Wang et al. (2004): 11×11 Gaussian window, σ = 1.5, K1 = 0.01, K2 = 0.03, per
  channel, averaged over the pixels whose window lies inside the image (the border of
  width 5 is cropped, as in the reference MATLAB code and scikit-image with
  ``gaussian_weights=True, use_sample_covariance=False``). The SSIM map comes from
  torchmetrics; its own scalar also averages the reflect-padded border, which can read
  0.01 off on 64×64 frames (a whole point of SSIM×100), so the crop is done here.
  Frames need H, W ≥ 11; 64×64 works. Values lie in [-1, 1]; reports show SSIM × 100.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from worldvla.errors import DataError

PSNR_CAP_DB = 100.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


@dataclass(frozen=True)
class StepScores:
    """Scores of every frame of a video batch."""

    per_frame: np.ndarray  # (N, T)

    @property
    def per_step(self) -> np.ndarray:
        """Mean over videos for each rollout step: ``(T,)``."""
        return self.per_frame.mean(axis=0)

    @property
    def mean(self) -> float:
        """Mean over all frames of all videos."""
        return float(self.per_frame.mean())


def check_videos(real: np.ndarray, pred: np.ndarray, min_size: int = 1) -> None:
    """Raise :class:`DataError` unless both are uint8 ``(N, T, H, W, 3)`` of the same shape."""
    for name, v in (("real", real), ("pred", pred)):
        if not isinstance(v, np.ndarray) or v.dtype != np.uint8 or v.ndim != 5 or v.shape[-1] != 3:
            got = f"{v.dtype} {v.shape}" if isinstance(v, np.ndarray) else type(v).__name__
            raise DataError(f"{name} videos must be a uint8 array (N, T, H, W, 3), got {got}")
    if real.shape != pred.shape:
        raise DataError(f"real and predicted videos differ in shape: {real.shape} vs {pred.shape}")
    if real.shape[0] == 0 or real.shape[1] == 0:
        raise DataError(f"no frames to compare: videos of shape {real.shape}")
    if min(real.shape[2:4]) < min_size:
        raise DataError(f"frames of {real.shape[2]}x{real.shape[3]} are smaller than {min_size}x{min_size}")


def _frames_to_tensor(frames: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """uint8 ``(M, H, W, 3)`` -> float ``(M, 3, H, W)`` in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).to(dtype) / 255.0


def _per_frame(
    real: np.ndarray,
    pred: np.ndarray,
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batch_frames: int,
    dtype: torch.dtype,
) -> StepScores:
    n, t = real.shape[:2]
    flat_r = real.reshape(n * t, *real.shape[2:])  # (N*T, H, W, 3)
    flat_p = pred.reshape(n * t, *pred.shape[2:])
    out = []
    for s in range(0, n * t, batch_frames):
        p, r = flat_p[s : s + batch_frames], flat_r[s : s + batch_frames]
        out.append(fn(_frames_to_tensor(p, dtype), _frames_to_tensor(r, dtype)).double())
    return StepScores(torch.cat(out).numpy().reshape(n, t))  # (N, T)


def _psnr(p: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    vals = peak_signal_noise_ratio(p, r, data_range=1.0, reduction="none", dim=(1, 2, 3))
    return vals.clamp(max=PSNR_CAP_DB)


def _ssim(p: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    _, full = structural_similarity_index_measure(
        p,
        r,
        data_range=1.0,
        kernel_size=SSIM_WINDOW,
        sigma=SSIM_SIGMA,
        reduction="none",
        return_full_image=True,
    )
    c = (SSIM_WINDOW - 1) // 2
    return full[..., c:-c, c:-c].mean(dim=(1, 2, 3))  # (M,) over channels and interior pixels


def psnr(real: np.ndarray, pred: np.ndarray, batch_frames: int = 256) -> StepScores:
    """Per-frame PSNR in dB (data range 255, capped at :data:`PSNR_CAP_DB`) of uint8 videos."""
    check_videos(real, pred)
    return _per_frame(real, pred, _psnr, batch_frames, torch.float64)


def ssim(real: np.ndarray, pred: np.ndarray, batch_frames: int = 64) -> StepScores:
    """Per-frame SSIM in [-1, 1] (Wang et al. 2004, 11×11 Gaussian window) of uint8 videos."""
    check_videos(real, pred, min_size=SSIM_WINDOW)
    # float32: the convolutions are ~40x faster than in float64 and agree to ~1e-6.
    return _per_frame(real, pred, _ssim, batch_frames, torch.float32)


def frame_metrics(pred: np.ndarray, real: np.ndarray) -> dict[str, np.ndarray]:
    """Per-frame PSNR (dB) and SSIM (×100) of uint8 ``(N, H, W, 3)`` frames, with the
    conventions above (PSNR capped, SSIM border cropped)."""
    real_v, pred_v = real[:, None], pred[:, None]  # videos of one frame
    return {
        "psnr": psnr(real_v, pred_v).per_frame[:, 0],
        "ssim": 100 * ssim(real_v, pred_v).per_frame[:, 0],
    }
