"""The world-model role of WorldVLA: frame + action -> next frame, and N-frame rollouts.

Prompt (SPEC §2, history 1): ``BOS, world prompt, IMG(t), ACT(t), SEP``; the model then
writes ``IMG(t+1)``. The grid layout is known, so BOI, the grid tokens, row separators and
EOI are forced and only image codes are sampled (SPEC §6). A rollout feeds each predicted
frame back as the next prompt's frame (the model never sees the real frames after the
first), batched over several episodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldvla.errors import DataError
from worldvla.model.generation import generate_frame
from worldvla.sequence import world_prompt_ids
from worldvla.tokenizers.action import ActionTokenizer


class WorldModel:
    """Batched next-frame prediction in pixel space (and in code space for speed)."""

    def __init__(
        self,
        model: torch.nn.Module,
        bundle: Any,
        temperature: float = 0.0,
        top_k: int | None = None,
        seed: int = 0,
    ) -> None:
        self.model = model.eval()
        self.bundle = bundle
        self.vocab = bundle.vocab
        self.layout = bundle.layout
        self.text_tokenizer = bundle.text_tokenizer
        self.image_tokenizer = bundle.image_tokenizer
        self.action_tokenizer = ActionTokenizer(bundle.action_stats, n_bins=self.vocab.action_bins)
        self.temperature = temperature
        self.top_k = top_k
        self._generator = torch.Generator().manual_seed(seed)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str | torch.device = "cpu", **kwargs: Any
    ) -> WorldModel:
        from worldvla.train.checkpoint import load_for_inference

        model, bundle = load_for_inference(path, device=device)
        return cls(model, bundle, **kwargs)

    # ------------------------------------------------------------------ code space
    def encode(self, frames: np.ndarray) -> np.ndarray:
        frames = np.asarray(frames)
        size = self.image_tokenizer.image_size
        if frames.ndim != 4 or frames.shape[1:] != (size, size, 3) or frames.dtype != np.uint8:
            raise DataError(f"frames must be uint8 (N, {size}, {size}, 3), got {frames.dtype} {frames.shape}")
        with torch.inference_mode():
            return self.image_tokenizer.encode(frames).cpu().numpy()

    def decode(self, codes: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.image_tokenizer.decode(torch.as_tensor(np.asarray(codes), dtype=torch.long))

    @torch.inference_mode()
    def next_codes(self, codes: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """``(N, h, w)`` codes of frame t and ``(N, D)`` actions -> ``(N, h, w)`` codes of frame t+1."""
        bins = self.action_tokenizer.encode(np.asarray(actions))  # validates D and finiteness
        prompts = [
            torch.from_numpy(world_prompt_ids(self.vocab, self.text_tokenizer, c, b, self.layout.prompts))
            for c, b in zip(codes, bins)
        ]
        out = generate_frame(
            self.model,
            self.vocab,
            prompts,
            grid=tuple(codes.shape[1:]),
            temperature=self.temperature,
            top_k=self.top_k,
            generator=self._generator,
        )
        return out.cpu().numpy()

    # ------------------------------------------------------------------ pixel space
    def predict_next_frame(self, frames: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """``(N, H, W, 3)`` uint8 frames + ``(N, D)`` actions -> ``(N, H, W, 3)`` predicted next frames.

        A single frame ``(H, W, 3)`` with a ``(D,)`` action is accepted too.
        """
        single = np.asarray(frames).ndim == 3
        frames = np.asarray(frames)[None] if single else np.asarray(frames)
        actions = np.asarray(actions, dtype=np.float32).reshape(len(frames), -1)
        out = self.decode(self.next_codes(self.encode(frames), actions))
        return out[0] if single else out

    def rollout(
        self, first_frames: np.ndarray, actions: np.ndarray, return_codes: bool = False
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Imagine ``T`` frames from ``(N, H, W, 3)`` first frames and ``(N, T, D)`` actions.

        Returns ``(N, T, H, W, 3)`` uint8: entry ``t`` is the prediction of the frame after
        ``actions[:, t]`` (the first real frame is not included).
        """
        first = np.asarray(first_frames)
        actions = np.asarray(actions, dtype=np.float32)
        if actions.ndim != 3 or actions.shape[0] != first.shape[0]:
            raise DataError(f"actions must be (N, T, D) with N={first.shape[0]}, got {actions.shape}")
        codes = self.encode(first)
        all_codes: list[np.ndarray] = []
        for t in range(actions.shape[1]):
            codes = self.next_codes(codes, actions[:, t])
            all_codes.append(codes)
        stacked = np.stack(all_codes, axis=1)  # (N, T, h, w)
        n, t, h, w = stacked.shape
        pixels = self.decode(stacked.reshape(n * t, h, w)).reshape(n, t, *first.shape[1:])
        return (pixels, stacked) if return_codes else pixels


def rollout_many(
    world_model: WorldModel, episodes: Sequence[tuple[np.ndarray, np.ndarray]], batch_size: int = 8
) -> list[np.ndarray]:
    """Roll out several ``(first_frame (H,W,3), actions (T,D))`` pairs of equal T in batches."""
    outs: list[np.ndarray] = []
    for s in range(0, len(episodes), batch_size):
        part = episodes[s : s + batch_size]
        frames = np.stack([f for f, _ in part])
        acts = np.stack([a for _, a in part])
        outs.extend(world_model.rollout(frames, acts))
    return outs
