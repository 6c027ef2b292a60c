"""The world-model role of WorldVLA: frame + action -> next frame, and N-frame rollouts.

Prompt (SPEC §2, history 1): ``BOS, world prompt, IMG(t), ACT(t), SEP``; the model then
writes ``IMG(t+1)``. The grid layout is known, so BOI, the grid tokens, row separators and
EOI are forced and only image codes are sampled (SPEC §6). A rollout feeds each predicted
frame back as the next prompt's frame (the model never sees the real frames after the
first), batched over several episodes.

A checkpoint trained with ``world_horizon`` H > 1 also knows ``IMG(t), ACT(t..t+k-1) ->
IMG(t+k)`` for k ≤ H. Its rollouts go from anchor to anchor: frames t+1 … t+H are each
imagined from the anchor frame t and the actions since it (one batched call), and frame
t+H becomes the next anchor. A predicted frame is fed back every H steps instead of every
step, and every prediction sees all the actions that lead to it (docs/world_model.md).

A checkpoint trained with some world-model samples whose actions were not given
(``world_action_dropout``: null-action ids in the action block) also predicts the next
frame without its actions, and ``guidance`` w decodes every frame from the logits
``u + w·(c − u)`` of the prompt with its actions (c) and with null actions (u), both in one
batch: classifier-free guidance, which pushes the imagined frame towards what the actions
change (w = 1: the plain model; docs/world_model.md).

Bounded inputs, as in :mod:`worldvla.policy`: frames must be uint8 ``(N, R, R, 3)`` at the
checkpoint's resolution, codes ``(N, h, w)`` on the checkpoint's grid and in the codebook,
actions ``(N, D)`` finite; anything else is a :class:`~worldvla.errors.DataError` before the
model runs. The world-model sequence has no free text, so its length is fixed by the
layout; a checkpoint whose world-model sequence would exceed the model's ``max_seq_len`` is
refused when the world model is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldvla.artifacts.inference import check_guidance
from worldvla.errors import ConfigError, DataError
from worldvla.model.generation import Sampling, generate_frame
from worldvla.sequence import action_length, frame_length, world_prompt_ids
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
        guidance: float | None = None,
    ) -> None:
        """``temperature``, ``top_k`` and ``seed`` (of the generator) make the :class:`Sampling`
        of every next frame; the defaults decode greedily. ``guidance`` w ≠ 1 decodes every
        frame with classifier-free guidance on the actions: logits ``u + w·(c − u)`` of the
        prompt with its actions (``c``) and with null actions (``u``), at twice the compute;
        only for a checkpoint trained with some null-action samples
        (``world_action_dropout``), whose vocabulary has the null-action id. ``None`` takes
        the checkpoint's inference default (``world_guidance`` in ``inference.json``)."""
        self.model = model.eval()
        self.bundle = bundle
        self.vocab = bundle.vocab
        self.layout = bundle.layout
        self.text_tokenizer = bundle.text_tokenizer
        self.image_tokenizer = bundle.image_tokenizer
        self.action_tokenizer = ActionTokenizer(bundle.action_stats, n_bins=self.vocab.action_bins)
        self.sampling = Sampling(
            temperature=temperature, top_k=top_k, generator=torch.Generator().manual_seed(seed)
        )
        guidance = check_guidance(bundle.inference.world_guidance if guidance is None else guidance)
        if guidance != 1.0 and not self.vocab.has_null_action:
            raise ConfigError(
                f"{bundle.path}: guidance {guidance} needs a checkpoint trained with null-action world "
                "samples (world_action_dropout > 0); this one has no null-action id"
            )
        self.guidance = guidance
        self.horizon = self.layout.world_horizon
        # BOS, world prompt, IMG(t), ACT(t..t+H-1), SEP, then IMG(t+H) and SEP (sequence.py).
        text = len(self.text_tokenizer.encode(self.layout.prompts.world_prompt))
        span = action_length(self.horizon * self.layout.action_dim)
        n = 1 + text + 2 * frame_length(*self.layout.grid) + span + 2
        max_len = int(bundle.model_config.max_seq_len)
        if n > max_len:
            raise ConfigError(
                f"{bundle.path}: a world-model sequence has {n:,} tokens, over the model's "
                f"max_seq_len of {max_len:,}"
            )

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str | torch.device = "cpu", **kwargs: Any
    ) -> WorldModel:
        from worldvla.artifacts.checkpoint import load_for_inference

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

    def _check_codes(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes)
        grid = tuple(self.layout.grid)
        if codes.ndim != 3 or codes.shape[1:] != grid or codes.dtype.kind not in "iu":
            want = f"(N, {grid[0]}, {grid[1]})"
            raise DataError(f"codes must be integer {want}, got {codes.dtype} {codes.shape}")
        if codes.size and (codes.min() < 0 or codes.max() >= self.vocab.image_codes):
            raise DataError(
                f"codes must lie in [0, {self.vocab.image_codes}), got [{codes.min()}, {codes.max()}]"
            )
        return codes

    def _check_actions(self, actions: np.ndarray, n: int) -> np.ndarray:
        actions = np.asarray(actions)
        d = self.layout.action_dim
        ok = actions.shape == (n, d) or (
            actions.ndim == 3
            and actions.shape[0] == n
            and actions.shape[2] == d
            and 1 <= actions.shape[1] <= self.horizon
        )
        if not ok:
            span = f" or ({n}, k, {d}) with k <= {self.horizon}" if self.horizon > 1 else ""
            raise DataError(f"actions must be ({n}, {d}){span} for {n} frames, got shape {actions.shape}")
        return actions

    @torch.inference_mode()
    def next_codes(self, codes: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """``(N, h, w)`` codes of frame t and ``(N, D)`` actions -> ``(N, h, w)`` codes of frame t+1;
        with ``(N, k, D)`` actions (k up to the checkpoint's ``world_horizon``), of frame t+k."""
        codes = self._check_codes(codes)
        actions = self._check_actions(actions, len(codes))
        bins = self.action_tokenizer.encode(actions.reshape(-1, actions.shape[-1]))  # validates finiteness
        return self._generate(list(codes), list(bins.reshape(*actions.shape[:-1], -1)))

    def _generate(self, codes: Sequence[np.ndarray], bins: Sequence[np.ndarray]) -> np.ndarray:
        """One batched call: next-frame codes for every (frame codes, action bins) pair, whose
        action spans may differ in length (the prompts are left-padded)."""

        def prompts(null: bool) -> list[torch.Tensor]:
            return [
                torch.from_numpy(
                    world_prompt_ids(self.vocab, self.text_tokenizer, c, b, self.layout.prompts, null)
                )
                for c, b in zip(codes, bins)
            ]

        guided = self.guidance != 1.0
        out = generate_frame(
            self.model,
            self.vocab,
            prompts(False),
            grid=tuple(np.asarray(codes[0]).shape),
            sampling=self.sampling,
            unconditioned=prompts(True) if guided else None,
            guidance=self.guidance,
        )
        return out.cpu().numpy()

    # ------------------------------------------------------------------ pixel space
    def predict_next_frame(self, frames: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """``(N, H, W, 3)`` uint8 frames + ``(N, D)`` actions -> ``(N, H, W, 3)`` predicted next frames.

        A single frame ``(H, W, 3)`` with a ``(D,)`` action is accepted too.
        """
        single = np.asarray(frames).ndim == 3
        frames = np.asarray(frames)[None] if single else np.asarray(frames)
        actions = np.asarray(actions)
        actions = actions[None] if single and actions.ndim == 1 else actions
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
        actions = np.asarray(actions)
        codes = self.encode(first)
        d = self.layout.action_dim
        if actions.ndim != 3 or actions.shape[0] != first.shape[0] or actions.shape[2] != d:
            raise DataError(f"actions must be (N, T, {d}) with N={first.shape[0]}, got {actions.shape}")
        bins = self.action_tokenizer.encode(actions.reshape(-1, d)).reshape(*actions.shape[:2], -1)
        all_codes: list[np.ndarray] = []
        for t in range(0, actions.shape[1], self.horizon):
            # Frames t+1 … t+j of this segment, each from the anchor frame t and the actions
            # since it: one call for all N·j of them.
            n, j = len(codes), min(self.horizon, actions.shape[1] - t)
            pairs = [(e, i) for i in range(j) for e in range(n)]  # step-major
            out = self._generate([codes[e] for e, _ in pairs], [bins[e, t : t + i + 1] for e, i in pairs])
            segment = out.reshape(j, n, *codes.shape[1:])  # (j, N, h, w)
            all_codes.extend(segment)
            codes = segment[-1]
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
