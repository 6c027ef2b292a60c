"""World-model evaluation metrics (SPEC §7): PSNR, SSIM, LPIPS and FVD.

- :mod:`.image`: per-frame PSNR and SSIM of uint8 video batches ``(N, T, H, W, 3)``.
- :mod:`.lpips`: the LPIPS network (AlexNet / VGG16 trunk + linear heads) and its loader.
- :mod:`.i3d`: the Kinetics-400 I3D (own implementation + TorchScript loader).
- :mod:`.fvd`: Fréchet distance and FVD over I3D embeddings.

Pretrained weights are never downloaded; :func:`default_lpips` and :func:`default_fvd`
return None when the files are not available locally, so callers can skip those metrics.
See ``docs/metrics.md`` for conventions and where the weight files go.

The function ``fvd(real, fake, detector)`` stays in :mod:`.fvd` (``metrics.fvd.fvd``) so the
package attribute ``fvd`` remains the module.
"""

from worldvla.eval.metrics.fvd import (
    FVD,
    default_fvd,
    frechet_distance,
    fvd_from_features,
    video_features,
)
from worldvla.eval.metrics.i3d import MIN_FRAMES, I3DDetector, InceptionI3d, load_i3d
from worldvla.eval.metrics.image import StepScores, psnr, ssim
from worldvla.eval.metrics.lpips import LPIPS, default_lpips, load_lpips, lpips_distance, video_lpips

__all__ = [
    "FVD",
    "LPIPS",
    "MIN_FRAMES",
    "I3DDetector",
    "InceptionI3d",
    "StepScores",
    "default_fvd",
    "default_lpips",
    "frechet_distance",
    "fvd_from_features",
    "load_i3d",
    "load_lpips",
    "lpips_distance",
    "psnr",
    "ssim",
    "video_features",
    "video_lpips",
]
