"""WorldVLAPolicy: the action-model role of WorldVLA behind a LeRobot-style interface.

The model owns logits; the policy owns everything around them (STYLE §7): the history
buffer of the last M frames, the action queue, image tokenization, the prompt, constrained
decoding of the chunk and de-normalization with the checkpoint's statistics.

Chunks are executed open-loop as in the reference (SPEC §6): :meth:`select_action` pops
from a queue and queries the model only when the queue is empty (or every
``replan_every`` steps if set). The policy is batched over ``num_envs`` parallel
environments: each has its own history and queue, and one model call serves all envs
that need a new chunk.

Observation format: ``{"image": uint8 (H, W, 3), "instruction": str}`` for one env, or a
list of such dicts (one per env). ``"images": {camera: array}`` is accepted too, in which
case the checkpoint's camera is used, and so is what an ``Env`` returns
(``worldvla.envs.base.Observation``, read the same way).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldvla.envs.base import Observation as EnvObservation
from worldvla.errors import DataError
from worldvla.model.generation import check_readout, generate_actions
from worldvla.sequence import action_prompt_ids
from worldvla.tokenizers.action import ActionTokenizer

Observation = dict[str, Any]


def _as_batch(obs: Observation | EnvObservation | Sequence) -> tuple[bool, list[Observation]]:
    """(single, one dict per env) for one observation or a list; Env observations become dicts."""
    single = isinstance(obs, dict | EnvObservation)
    items = [obs] if single else list(obs)
    return single, [
        {"images": o.images, "instruction": o.instruction} if isinstance(o, EnvObservation) else o
        for o in items
    ]


@dataclass(frozen=True)
class PolicyConfig:
    """Inference options; the data layout (M, K, D, prompts) comes from the checkpoint."""

    replan_every: int | None = None  # None: execute the whole chunk open-loop (reference)
    temperature: float = 0.0  # 0 = greedy (reference)
    top_k: int | None = None
    chunk_mask: bool | None = None  # None: as trained
    # "argmax" (greedy, reference) or "mean" (the bin nearest to the expected action);
    # None: the checkpoint's training config's action_readout ("argmax" if it has none).
    action_readout: str | None = None
    seed: int = 0


class WorldVLAPolicy:
    """Instruction + last M frames -> chunk of K actions, batched over parallel envs."""

    def __init__(
        self, model: torch.nn.Module, bundle: Any, config: PolicyConfig | None = None, num_envs: int = 1
    ) -> None:
        self.model = model.eval()
        self.bundle = bundle
        self.config = config or PolicyConfig()
        self.vocab = bundle.vocab
        self.layout = bundle.layout
        self.text_tokenizer = bundle.text_tokenizer
        self.image_tokenizer = bundle.image_tokenizer
        self.action_tokenizer = ActionTokenizer(bundle.action_stats, n_bins=self.vocab.action_bins)
        self.chunk_mask = self.layout.chunk_mask if self.config.chunk_mask is None else self.config.chunk_mask
        trained = getattr(getattr(bundle, "config", None), "action_readout", "argmax")
        self.action_readout = self.config.action_readout or trained
        check_readout(self.action_readout, self.config.temperature)
        self.num_envs = num_envs
        self._generator = torch.Generator().manual_seed(self.config.seed)
        self.reset()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        config: PolicyConfig | None = None,
        num_envs: int = 1,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> WorldVLAPolicy:
        """``dtype`` (e.g. ``torch.bfloat16``) loads the weights directly in it (7B checkpoints)."""
        from worldvla.train.checkpoint import load_for_inference

        model, bundle = load_for_inference(path, device=device, dtype=dtype)
        return cls(model, bundle, config, num_envs=num_envs)

    @property
    def chunk_len(self) -> int:
        return self.layout.chunk_len

    @property
    def action_dim(self) -> int:
        return self.layout.action_dim

    # ------------------------------------------------------------------ state
    def reset(self, env_ids: Sequence[int] | None = None) -> None:
        """Forget history and queued actions (all envs, or only ``env_ids``)."""
        if env_ids is None or not hasattr(self, "_history"):
            self._history: list[deque[np.ndarray]] = [
                deque(maxlen=self.layout.history) for _ in range(self.num_envs)
            ]
            self._queue: list[deque[np.ndarray]] = [deque() for _ in range(self.num_envs)]
            self._since_plan = [0] * self.num_envs
            return
        for i in env_ids:
            self._history[i].clear()
            self._queue[i].clear()
            self._since_plan[i] = 0

    # ------------------------------------------------------------------ observations
    def _frame(self, obs: Observation) -> np.ndarray:
        if "image" in obs:
            img = obs["image"]
        elif "images" in obs:
            cam = self.layout.camera
            if cam not in obs["images"]:
                raise DataError(f"observation has cameras {sorted(obs['images'])}, the policy needs {cam!r}")
            img = obs["images"][cam]
        else:
            raise DataError("observation needs an 'image' (H, W, 3) uint8 array or an 'images' dict")
        img = np.asarray(img)
        size = self.image_tokenizer.image_size
        if img.shape != (size, size, 3) or img.dtype != np.uint8:
            raise DataError(
                f"observation image must be uint8 ({size}, {size}, 3), got {img.dtype} {img.shape}"
            )
        return img

    def _observe(self, env_ids: Sequence[int], observations: Sequence[Observation]) -> None:
        """Tokenize the new frames (one batched encoder call) and push them into the histories."""
        frames = np.stack([self._frame(o) for o in observations])
        with torch.inference_mode():
            codes = self.image_tokenizer.encode(frames).cpu().numpy()  # (N, h, w)
        for i, c in zip(env_ids, codes):
            hist = self._history[i]
            if not hist:
                # Episode start: pad the history with the first frame, as the datasets do.
                hist.extend([c] * (self.layout.history - 1))
            hist.append(c)

    # ------------------------------------------------------------------ inference
    @torch.inference_mode()
    def predict_action_chunk(self, obs: Observation | Sequence[Observation]) -> np.ndarray:
        """Observe and return a fresh chunk: ``(K, D)`` for one obs, ``(N, K, D)`` for a list.

        With a list, entry i is env i (``len(obs)`` must equal ``num_envs``).
        """
        single, observations = _as_batch(obs)
        if not single and len(observations) != self.num_envs:
            raise ValueError(f"got {len(observations)} observations for {self.num_envs} envs")
        env_ids = list(range(len(observations)))
        self._observe(env_ids, observations)
        chunks = self._plan(env_ids, observations)
        return chunks[0] if single else chunks

    @torch.inference_mode()
    def predict_chunks_from_frames(
        self, frames: Sequence[np.ndarray], instructions: Sequence[str]
    ) -> np.ndarray:
        """Chunks ``(N, K, D)`` for N explicit frame histories, without touching env state.

        ``frames[i]``: uint8 ``(m, H, W, 3)``, the frames up to the query (oldest first); fewer
        than M are padded with the first, as at an episode start. For offline evaluation on
        recorded episodes.
        """
        m = self.layout.history
        codes = [
            self.image_tokenizer.encode(np.stack([self._frame({"image": f}) for f in h[-m:]])).cpu().numpy()
            for h in frames
        ]
        return self.predict_chunks_from_codes(codes, instructions)

    @torch.inference_mode()
    def predict_chunks_from_codes(
        self, codes: Sequence[np.ndarray], instructions: Sequence[str]
    ) -> np.ndarray:
        """As :meth:`predict_chunks_from_frames`, from image codes ``(m, h, w)`` already encoded."""
        if len(codes) != len(instructions):
            raise ValueError(f"got {len(codes)} histories for {len(instructions)} instructions")
        m = self.layout.history
        prompts = []
        for text, c in zip(instructions, codes):
            c = list(c)[-m:]
            hist = [c[0]] * (m - len(c)) + c
            prompts.append(
                torch.from_numpy(
                    action_prompt_ids(self.vocab, self.text_tokenizer, text, hist, self.layout.prompts)
                )
            )
        bins = generate_actions(
            self.model,
            self.vocab,
            prompts,
            num_actions=self.chunk_len,
            action_dim=self.action_dim,
            chunk_mask=self.chunk_mask,
            temperature=self.config.temperature,
            top_k=self.config.top_k,
            generator=self._generator,
            readout=self.action_readout,
        )  # (N, K, D)
        return self.action_tokenizer.decode(bins.cpu().numpy())

    def _plan(self, env_ids: Sequence[int], observations: Sequence[Observation]) -> np.ndarray:
        return self.predict_chunks_from_codes(
            [np.stack(self._history[i]) for i in env_ids], [o["instruction"] for o in observations]
        )

    @torch.inference_mode()
    def select_action(
        self, obs: Observation | Sequence[Observation], env_ids: Sequence[int] | None = None
    ) -> np.ndarray:
        """One action per env: ``(D,)`` for one obs, ``(N, D)`` for a list.

        ``env_ids`` names the envs the observations belong to (default: all, in order), so
        envs that finished early simply drop out of the batch. Every call observes the
        frame (so the history stays consecutive); the model is queried only for envs
        whose queue is empty or whose replanning interval elapsed, all in one batch.
        """
        single, observations = _as_batch(obs)
        ids = list(env_ids) if env_ids is not None else list(range(len(observations)))
        if len(ids) != len(observations) or (env_ids is None and not single and len(ids) != self.num_envs):
            raise ValueError(f"got {len(observations)} observations for envs {ids} of {self.num_envs}")
        self._observe(ids, observations)
        k = self.config.replan_every
        need = [
            j for j, i in enumerate(ids) if not self._queue[i] or (k is not None and self._since_plan[i] >= k)
        ]
        if need:
            chunks = self._plan([ids[j] for j in need], [observations[j] for j in need])
            for j, chunk in zip(need, chunks):
                self._queue[ids[j]] = deque(chunk)
                self._since_plan[ids[j]] = 0
        actions = []
        for i in ids:
            actions.append(self._queue[i].popleft())
            self._since_plan[i] += 1
        out = np.stack(actions).astype(np.float32)
        return out[0] if single else out
