"""Training of the VQ image tokenizer on frames (CPU, minutes).

One function, :func:`train_vq`, over uint8 frame arrays. Reading them from an episode store
(whole episodes held out for validation) is the data side's job:
:func:`worldvla.train.image_tokenizer.train_tokenizer`, so this module imports no data code.

Loss: reconstruction (MSE by default — it is what PSNR measures — or L1) plus the
quantizer's commitment loss (``VectorQuantize``; FSQ has none). An adversarial PatchGAN
hinge loss is available as an option (``adversarial_weight > 0``); a perceptual (LPIPS)
loss is not, because it needs pretrained networks that cannot be downloaded here.

Precision: float32 by default; ``bf16=True`` runs the training forward pass under CPU bf16
autocast (weights, optimizer and losses stay float32; evaluation and the saved tokenizer
are float32). The speed and quality effect is measured in ``docs/image_tokenizer.md``.

Budget: ``steps`` optimizer steps; the schedule (linear warm-up, then cosine decay to 10 %)
is a function of the step alone, so the same config gives the same tokenizer on a fast or
a slow machine. ``minutes`` is an optional wall-clock cap: when it is spent, training stops
after the current step, says so (``stopped`` in the metrics; the callers print it loudly),
and the schedule is *not* compressed — a capped tokenizer has not annealed.

Outputs in ``out``: the tokenizer (``config.json`` + ``model.safetensors``, written
atomically at every save), ``metrics.json`` (held-out PSNR, codebook usage and
perplexity, steps run of the budget), ``reconstructions.png`` (held-out originals above
their reconstructions) and TensorBoard logs in ``tb/``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from worldvla.errors import ConfigError, DataError
from worldvla.tokenizers.image_base import psnr
from worldvla.tokenizers.vq import VQConfig, VQTokenizer, vq_preset
from worldvla.utils.io import atomic_path, atomic_write_text


@dataclass(frozen=True)
class VQTrainConfig:
    preset: str = "mw64"
    steps: int = 2_000  # the budget; the learning-rate schedule follows it
    minutes: float | None = None  # optional wall-clock cap (stops early, loudly)
    batch_size: int = 16  # more steps beat bigger batches under a CPU time budget (docs)
    lr: float = 2e-3
    warmup_steps: int = 100
    recon_loss: str = "mse"  # "mse" | "l1"
    bf16: bool = False  # bf16 autocast of the training forward pass (faster on CPU; docs)
    adversarial_weight: float = 0.0  # 0 = off; hinge PatchGAN loss on the reconstructions
    adversarial_start: int = 1000  # steps of pure reconstruction before the discriminator joins
    val_fraction: float = 0.1
    max_val_frames: int = 1024
    eval_every: int = 250
    save_every_s: float = 120.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.recon_loss not in ("mse", "l1"):
            raise ConfigError(f"recon_loss must be 'mse' or 'l1', got {self.recon_loss!r}")
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError("steps and batch_size must be positive")
        if self.minutes is not None and not 0 < self.minutes < math.inf:
            raise ConfigError(f"minutes (a wall-clock cap) must be a positive number, got {self.minutes}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction}")


# ---------------------------------------------------------------------------- helpers
class PatchDiscriminator(nn.Module):
    """A small PatchGAN: real/fake logits per ~16×16 patch (the optional adversarial loss)."""

    def __init__(self, ch: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, ch, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(ch, 2 * ch, 4, 2, 1),
            nn.GroupNorm(8, 2 * ch),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * ch, 1, 3, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def code_stats(codes: np.ndarray, codebook_size: int) -> tuple[float, float]:
    """(fraction of the codebook used, perplexity of the code histogram) over ``codes``."""
    counts = np.bincount(np.asarray(codes).reshape(-1), minlength=codebook_size)
    p = counts / max(counts.sum(), 1)
    nz = p[p > 0]
    return float((counts > 0).mean()), float(np.exp(-(nz * np.log(nz)).sum()))


def code_stability(frames: np.ndarray, codes: np.ndarray, tolerance: int = 2) -> dict[str, float]:
    """How codes of consecutive frames change, on uint8 ``frames (N, H, W, 3)`` and ``codes (N, h, w)``.

    ``codes_changed``: the fraction of codes that differ between frames i and i+1.
    ``code_stability``: among the patches whose pixels all stayed within ``tolerance`` levels,
    the fraction whose code stayed too (1.0 for a tokenizer whose codes depend only on their
    own patch). Pairs are taken in order, so held-out frames of whole episodes give mostly
    consecutive frames of one episode; a patch that happens to be identical across an episode
    boundary is a fair test too.
    """
    if len(frames) < 2:
        return {"codes_changed": float("nan"), "code_stability": float("nan")}
    n, h, w = codes.shape
    ph, pw = frames.shape[1] // h, frames.shape[2] // w
    diff = np.abs(frames[1:].astype(np.int16) - frames[:-1].astype(np.int16)).max(-1)  # (N-1, H, W)
    still = diff.reshape(n - 1, h, ph, w, pw).max((2, 4)) <= tolerance  # (N-1, h, w)
    same = codes[1:] == codes[:-1]
    stability = float(same[still].mean()) if still.any() else float("nan")
    return {"codes_changed": float(1.0 - same.mean()), "code_stability": stability}


def evaluate(
    tok: VQTokenizer, frames: np.ndarray, consecutive: np.ndarray | None = None, batch_size: int = 128
) -> dict[str, float]:
    """Held-out PSNR (through the real uint8 encode/decode path), codebook usage, perplexity
    and, on ``consecutive`` frames (in time order), :func:`code_stability`."""
    codes, recon = [], []
    for s in range(0, len(frames), batch_size):
        c = tok.encode(frames[s : s + batch_size])
        codes.append(c.numpy())
        recon.append(tok.decode(c))
    all_codes = np.concatenate(codes)
    usage, ppl = code_stats(all_codes, tok.codebook_size)
    out = {"psnr": psnr(frames, np.concatenate(recon)), "usage": usage, "perplexity": ppl}
    if consecutive is not None:
        seq = np.asarray(consecutive)
        seq_codes = [tok.encode(seq[s : s + batch_size]).numpy() for s in range(0, len(seq), batch_size)]
        out.update(code_stability(seq, np.concatenate(seq_codes)))
    return out


def save_grid(path: Path, originals: np.ndarray, recon: np.ndarray, scale: int = 2) -> None:
    """PNG: originals in the top row, their reconstructions below (nearest-neighbour upscaled)."""
    from PIL import Image

    top, bottom = np.concatenate(list(originals), 1), np.concatenate(list(recon), 1)  # (H, n·W, 3)
    grid = np.concatenate([top, bottom], 0).repeat(scale, 0).repeat(scale, 1)  # (2H·s, n·W·s, 3)
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")


def _lr(cfg: VQTrainConfig, step: int) -> float:
    """Learning rate of ``step``: a function of the step alone (never of the elapsed time)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step / cfg.steps, 1.0))))


# ---------------------------------------------------------------------------- training
def train_vq(
    cfg: VQTrainConfig,
    train_frames: np.ndarray,
    val_frames: np.ndarray,
    out: str | Path | None = None,
    vq_cfg: VQConfig | None = None,
    progress: bool = True,
) -> tuple[VQTokenizer, dict[str, Any]]:
    """Train a tokenizer on uint8 ``(N, S, S, 3)`` frames; returns it and the final metrics."""
    vq_cfg = vq_cfg or vq_preset(cfg.preset)
    for name, f in (("training", train_frames), ("validation", val_frames)):
        if f.ndim != 4 or f.shape[1:] != (vq_cfg.image_size, vq_cfg.image_size, 3) or f.dtype != np.uint8:
            raise DataError(
                f"{name} frames must be uint8 (N, {vq_cfg.image_size}, {vq_cfg.image_size}, 3) for the "
                f"{cfg.preset!r} tokenizer, got {f.dtype} {f.shape}"
            )
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    tok = VQTokenizer(vq_cfg)
    model = tok.model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
    disc = disc_opt = None
    if cfg.adversarial_weight > 0:
        disc = PatchDiscriminator()
        disc_opt = torch.optim.AdamW(disc.parameters(), lr=cfg.lr, betas=(0.5, 0.9))
    consecutive = val_frames[: cfg.max_val_frames]  # whole held-out episodes, in time order
    val_frames = val_frames[
        np.sort(rng.permutation(len(val_frames))[: cfg.max_val_frames])
    ]  # a fixed, ordered subset
    out = Path(out) if out is not None else None
    writer = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tb"))
    cap = cfg.minutes * 60 if cfg.minutes else None
    t0 = last_save = time.monotonic()
    history: list[dict[str, float]] = []
    bar = tqdm(total=cfg.steps, desc="train-tokenizer", unit="step", disable=not progress)  # ETA
    step = 0
    stopped = None
    while step < cfg.steps:
        for g in opt.param_groups:
            g["lr"] = _lr(cfg, step)
        idx = rng.integers(0, len(train_frames), cfg.batch_size)
        x = torch.from_numpy(train_frames[idx]).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (B, 3, S, S)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            rec, codes, aux = model(x)
        rec, aux = rec.float(), aux.float()  # losses (and the weights) stay in float32
        recon = F.mse_loss(rec, x) if cfg.recon_loss == "mse" else F.l1_loss(rec, x)
        loss = recon + aux
        adv_on = disc is not None and step >= cfg.adversarial_start
        if adv_on:
            loss = loss - cfg.adversarial_weight * disc(rec).mean()  # hinge generator loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if adv_on:
            d_loss = F.relu(1 - disc(x)).mean() + F.relu(1 + disc(rec.detach())).mean()
            disc_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            disc_opt.step()
        step += 1
        bar.update(1)
        if writer is not None and step % 10 == 0:
            mse = F.mse_loss(rec.detach().clamp(-1, 1), x).item() / 4  # pixel range [0, 1]
            usage, ppl = code_stats(codes.numpy(), tok.codebook_size)
            writer.add_scalar("train/loss", loss.item(), step)
            writer.add_scalar("train/recon", recon.item(), step)
            writer.add_scalar("train/commit", aux.item(), step)
            writer.add_scalar("train/psnr", 10 * math.log10(1 / max(mse, 1e-10)), step)
            writer.add_scalar("train/batch_usage", usage, step)
            writer.add_scalar("train/batch_perplexity", ppl, step)
            writer.add_scalar("train/lr", opt.param_groups[0]["lr"], step)
        if step % cfg.eval_every == 0:
            m = evaluate(tok, val_frames, consecutive)
            m.update(step=step, seconds=time.monotonic() - t0)
            history.append(m)
            bar.set_postfix(psnr=f"{m['psnr']:.2f}", usage=f"{m['usage']:.2f}", loss=f"{loss.item():.4f}")
            model.train()
            if writer is not None:
                for k in ("psnr", "usage", "perplexity", "code_stability"):
                    writer.add_scalar(f"val/{k}", m[k], step)
        if out is not None and time.monotonic() - last_save > cfg.save_every_s:
            tok.save(out)
            last_save = time.monotonic()
        if cap is not None and step < cfg.steps and time.monotonic() - t0 >= cap:
            stopped = "time cap"  # after the current step, as training's cap does
            break
    bar.close()
    seconds = time.monotonic() - t0
    model.eval()
    final = evaluate(tok, val_frames, consecutive)
    metrics: dict[str, Any] = {
        "val_psnr": final["psnr"],
        "val_codebook_usage": final["usage"],
        "val_perplexity": final["perplexity"],
        "val_codes_changed": final["codes_changed"],
        "val_code_stability": final["code_stability"],
        "val_frames": len(val_frames),
        "train_frames": len(train_frames),
        "steps": step,
        "total_steps": cfg.steps,
        "stopped": stopped,  # None: the full budget ran; else why it ended early ("time cap")
        "seconds": seconds,
        "threads": torch.get_num_threads(),
        "codebook_size": tok.codebook_size,
        "grid": list(tok.grid),
        "train_config": asdict(cfg),
        "tokenizer_config": vq_cfg.to_dict(),
        "history": history,
    }
    if out is not None:
        tok.save(out)
        metrics["fingerprint"] = tok.fingerprint()
        n = min(8, len(val_frames))
        pick = val_frames[np.linspace(0, len(val_frames) - 1, n).astype(int)]
        save_grid(out / "reconstructions.png", pick, tok.decode(tok.encode(pick)))
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        if writer is not None:
            writer.add_scalar("val/final_psnr", final["psnr"], step)
            writer.close()
    return tok, metrics
