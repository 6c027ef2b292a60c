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

History. The prompt holds the frames of the last M control steps; at an episode start
the first frame is repeated to fill M, as the datasets do, unless the checkpoint's layout
has ``pad_history`` False (a converted WorldVLA release, whose reference prompts hold only
the frames seen so far).

Proprioceptive state. A checkpoint trained with ``use_state`` (its layout has
``state_dim > 0``) needs ``"state"``: a finite ``(S,)`` vector (Meta-World: hand xyz +
gripper opening; an ``Env`` observation's ``.state``), normalized and binned with the
checkpoint's ``state_stats.json`` and placed after the frames of the prompt. It is the state
at the query step, like the frame it comes with. Other checkpoints ignore a ``"state"``.

Bounded inputs. Every observation of a call is validated before any state changes or any
compute starts (:meth:`WorldVLAPolicy.check_observation`): the image must be uint8
``(R, R, 3)`` at the checkpoint's resolution, the instruction a ``str``, the state (when the
checkpoint reads one) a finite numeric ``(S,)`` vector. An instruction is
never truncated: if the action-model sequence it implies (prompt + M frames + K actions +
SEP, the layout the model was trained on) would exceed the model's ``max_seq_len``, the
call raises :class:`~worldvla.errors.DataError` naming the lengths, before the model runs.
Why refuse rather than truncate: a cut instruction silently changes the task, and
attention memory grows with the square of the sequence. The limit in text tokens is
:attr:`WorldVLAPolicy.max_instruction_tokens` (with the default byte tokenizer, one token
per UTF-8 byte).
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
from worldvla.errors import ConfigError, DataError
from worldvla.model.generation import Sampling, generate_actions
from worldvla.sequence import action_length, action_prompt_ids, frame_length, state_length
from worldvla.tokenizers.action import ActionTokenizer, Readout
from worldvla.tokenizers.state import StateTokenizer

Observation = dict[str, Any]


def _as_batch(obs: Observation | EnvObservation | Sequence) -> tuple[bool, list[Observation]]:
    """(single, one dict per env) for one observation or a list; Env observations become dicts."""
    single = isinstance(obs, dict | EnvObservation)
    if not single and not isinstance(obs, list | tuple):
        raise DataError(
            f"an observation must be a dict (or a list of dicts, one per env), got {type(obs).__name__}"
        )
    return single, [_as_dict(o) for o in ([obs] if single else obs)]


def _as_dict(obs: Any) -> Observation:
    if isinstance(obs, EnvObservation):
        d = {"images": obs.images, "instruction": obs.instruction}
        if obs.state is not None:
            d["state"] = obs.state
        return d
    if not isinstance(obs, dict):
        raise DataError(f"an observation must be a dict, got {type(obs).__name__}")
    return obs


@dataclass(frozen=True)
class PolicyConfig:
    """Inference options; the data layout (M, K, D, prompts) comes from the checkpoint, and an
    option left at None takes the checkpoint's inference default (``Bundle.inference``)."""

    replan_every: int | None = None  # None: execute the whole chunk open-loop (reference)
    temperature: float = 0.0  # 0 = greedy (reference)
    top_k: int | None = None
    chunk_mask: bool | None = None  # None: as trained
    # "argmax" (greedy, reference) or "mean" (the bin nearest to the expected action)
    # (worldvla.tokenizers.action.READOUTS); None: the checkpoint's default.
    action_readout: Readout | None = None
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
        self.state_dim = int(getattr(self.layout, "state_dim", 0) or 0)
        self.state_tokenizer: StateTokenizer | None = None
        if self.state_dim:
            stats = getattr(bundle, "state_stats", None)
            where = getattr(bundle, "path", "the checkpoint")
            if stats is None or stats.dim != self.state_dim or not self.vocab.has_state:
                raise ConfigError(
                    f"{where}: the model was trained with a {self.state_dim}-dim state in its prompt, but "
                    "the checkpoint lacks matching state statistics (state_stats.json) or state tokens"
                )
            self.state_tokenizer = StateTokenizer(stats, n_bins=self.vocab.state_bins)
        self.chunk_mask = self.layout.chunk_mask if self.config.chunk_mask is None else self.config.chunk_mask
        self.action_readout = self.config.action_readout or bundle.inference.action_readout
        self.sampling = Sampling(
            temperature=self.config.temperature,
            top_k=self.config.top_k,
            generator=torch.Generator().manual_seed(self.config.seed),
            readout=self.action_readout,
        )  # validated here, before any observation
        self.num_envs = num_envs
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
        from worldvla.artifacts.checkpoint import load_for_inference

        model, bundle = load_for_inference(path, device=device, dtype=dtype)
        return cls(model, bundle, config, num_envs=num_envs)

    def new_session(self) -> WorldVLAPolicy:
        """A policy with its own history, action queue and RNG that shares this one's model and
        tokenizers (read-only at inference): one per server connection, so clients never see
        each other's state."""
        return type(self)(self.model, self.bundle, self.config, num_envs=1)

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

    # ------------------------------------------------------------------ limits
    @property
    def max_seq_len(self) -> int:
        """The longest sequence the model was built for (its config's ``max_seq_len``)."""
        return int(self.bundle.model_config.max_seq_len)

    def sequence_length(self, instruction: str) -> int:
        """Tokens of the action-model sequence ``instruction`` implies (sequence.py layouts):
        ``BOS, prompt text, M frames, SEP`` then the K-action chunk and its ``SEP``."""
        prompt = self.layout.prompts.action_prompt.format(instruction=instruction)
        text = len(self.text_tokenizer.encode(prompt))
        frames = self.layout.history * frame_length(*self.layout.grid) + state_length(self.state_dim)
        return 1 + text + frames + 1 + self.chunk_len * action_length(self.action_dim) + 1

    @property
    def max_instruction_tokens(self) -> int:
        """Most text tokens an instruction may have (exact for the byte tokenizer; module docstring)."""
        return max(0, self.max_seq_len - self.sequence_length(""))

    def _prompt_ids(
        self, instruction: str, frames: Sequence[np.ndarray], state_bins: np.ndarray | None = None
    ) -> np.ndarray:
        return action_prompt_ids(
            self.vocab, self.text_tokenizer, instruction, frames, self.layout.prompts, state_bins=state_bins
        )

    def check_state(self, state: Any) -> np.ndarray | None:
        """The state as float64 ``(S,)`` if the checkpoint reads one (None otherwise); else DataError.

        Accepts a numeric array or a list of numbers; refuses a missing state, another shape,
        a non-numeric value and NaN/inf (module docstring).
        """
        if not self.state_dim:
            return None
        if state is None:
            raise DataError(
                f"observation needs a 'state' ({self.state_dim},) vector: this checkpoint was trained with "
                "the proprioceptive state in its prompt (use_state)"
            )
        if isinstance(state, (str, bytes)) or (
            isinstance(state, np.ndarray) and state.dtype.kind not in "iuf"
        ):
            what = state.dtype if isinstance(state, np.ndarray) else type(state).__name__
            raise DataError(f"observation 'state' must be numeric, got {what}")
        try:
            x = np.asarray(state, dtype=np.float64)
        except (TypeError, ValueError):
            raise DataError(
                f"observation 'state' must be a numeric vector, got {type(state).__name__}"
            ) from None
        if x.shape != (self.state_dim,):
            raise DataError(f"observation 'state' must have shape ({self.state_dim},), got {x.shape}")
        if not np.isfinite(x).all():
            raise DataError(f"observation 'state' contains NaN or inf: {x.tolist()}")
        return x

    def check_instruction(self, instruction: Any) -> str:
        """Return ``instruction`` if it is a string that fits the model; else raise :class:`DataError`."""
        if not isinstance(instruction, str):
            raise DataError(f"observation 'instruction' must be a str, got {type(instruction).__name__}")
        try:
            instruction.encode("utf-8")
        except UnicodeEncodeError as e:
            raise DataError(f"observation 'instruction' is not valid unicode: {e}") from None
        n = self.sequence_length(instruction)
        if n > self.max_seq_len:
            raise DataError(
                f"observation 'instruction' is too long: {len(instruction):,} characters make a "
                f"{n:,}-token sequence with {self.layout.history} frames and a {self.chunk_len}-action "
                f"chunk, over the model's max_seq_len of {self.max_seq_len:,} (instructions may have at most "
                f"{self.max_instruction_tokens:,} text tokens); shorten it"
            )
        return instruction

    # ------------------------------------------------------------------ observations
    def _frame(self, obs: Observation) -> np.ndarray:
        if "image" in obs:
            img = obs["image"]
        elif "images" in obs:
            cam = self.layout.camera
            if not isinstance(obs["images"], dict):
                got = type(obs["images"]).__name__
                raise DataError(f"observation 'images' must be a dict camera -> image, got {got}")
            if cam not in obs["images"]:
                cams = sorted(map(str, obs["images"]))
                raise DataError(f"observation has cameras {cams}, the policy needs {cam!r}")
            img = obs["images"][cam]
        else:
            raise DataError("observation needs an 'image' (H, W, 3) uint8 array or an 'images' dict")
        size = self.image_tokenizer.image_size
        if not isinstance(img, np.ndarray) or img.shape != (size, size, 3) or img.dtype != np.uint8:
            got = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
            raise DataError(f"observation image must be uint8 ({size}, {size}, 3), got {got}")
        return img

    def check_observation(self, obs: Observation | EnvObservation) -> np.ndarray:
        """Validate one observation without touching any state; return its frame.

        Raises :class:`DataError` for a missing or mis-shaped image, a missing or non-string
        instruction, an instruction too long for the model, or (for a checkpoint trained with
        the state) a missing, mis-shaped or non-finite state (module docstring).
        """
        o = _as_dict(obs)
        frame = self._frame(o)
        if "instruction" not in o:
            raise DataError("observation needs an 'instruction' string")
        self.check_instruction(o["instruction"])
        self.check_state(o.get("state"))
        return frame

    def _observe(self, env_ids: Sequence[int], observations: Sequence[Observation]) -> None:
        """Tokenize the new frames (one batched encoder call) and push them into the histories.

        Every observation is validated first, so a bad one leaves every history untouched.
        """
        frames = np.stack([self.check_observation(o) for o in observations])
        with torch.inference_mode():
            codes = self.image_tokenizer.encode(frames).cpu().numpy()  # (N, h, w)
        for i, c in zip(env_ids, codes):
            hist = self._history[i]
            if not hist and self.layout.pad_history:
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
            raise DataError(f"got {len(observations)} observations for {self.num_envs} envs")
        env_ids = list(range(len(observations)))
        self._observe(env_ids, observations)
        chunks = self._plan(env_ids, observations)
        return chunks[0] if single else chunks

    @torch.inference_mode()
    def predict_chunks_from_frames(
        self,
        frames: Sequence[np.ndarray],
        instructions: Sequence[str],
        states: Sequence[Any] | None = None,
    ) -> np.ndarray:
        """Chunks ``(N, K, D)`` for N explicit frame histories, without touching env state.

        ``frames[i]``: uint8 ``(m, H, W, 3)``, the frames up to the query (oldest first); fewer
        than M are padded with the first, as at an episode start (unless the layout's
        ``pad_history`` is False: then the prompt holds only those). ``states[i]``: the state at
        the query (only for a checkpoint trained with the state). For offline evaluation on
        recorded episodes.
        """
        m = self.layout.history
        codes = [
            self.image_tokenizer.encode(np.stack([self._frame({"image": f}) for f in h[-m:]])).cpu().numpy()
            for h in frames
        ]
        return self.predict_chunks_from_codes(codes, instructions, states)

    @torch.inference_mode()
    def predict_chunks_from_codes(
        self,
        codes: Sequence[np.ndarray],
        instructions: Sequence[str],
        states: Sequence[Any] | None = None,
    ) -> np.ndarray:
        """As :meth:`predict_chunks_from_frames`, from image codes ``(m, h, w)`` already encoded."""
        if len(codes) != len(instructions):
            raise DataError(f"got {len(codes)} histories for {len(instructions)} instructions")
        for text in instructions:
            self.check_instruction(text)
        state_bins: list[np.ndarray | None] = [None] * len(codes)
        if self.state_tokenizer is not None:
            if states is None or len(states) != len(codes):
                n = "no" if states is None else len(states)
                raise DataError(
                    f"got {n} states for {len(codes)} histories: this checkpoint reads the state (use_state)"
                )
            checked = [self.check_state(s) for s in states]  # all validated before any compute
            state_bins = list(self.state_tokenizer.encode(np.stack(checked)))  # (N, S)
        prompts = [
            torch.from_numpy(self._prompt_ids(text, self._frames_of(c), sb))
            for text, c, sb in zip(instructions, codes, state_bins)
        ]
        bins = generate_actions(
            self.model,
            self.vocab,
            prompts,
            num_actions=self.chunk_len,
            action_dim=self.action_dim,
            sampling=self.sampling,
            chunk_mask=self.chunk_mask,
        )  # (N, K, D)
        return self.action_tokenizer.decode(bins.cpu().numpy())

    def _frames_of(self, codes: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:
        """The prompt's frames from the codes seen so far (oldest first): the last M, with the
        first repeated to fill M at an episode start unless the layout says otherwise
        (``DataLayout.pad_history``)."""
        m = self.layout.history
        c = list(codes)[-m:]
        if not self.layout.pad_history:
            return c
        return [c[0]] * (m - len(c)) + c

    def _plan(self, env_ids: Sequence[int], observations: Sequence[Observation]) -> np.ndarray:
        return self.predict_chunks_from_codes(
            [np.stack(self._history[i]) for i in env_ids],
            [o["instruction"] for o in observations],
            [o.get("state") for o in observations] if self.state_dim else None,
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
            raise DataError(f"got {len(observations)} observations for envs {ids} of {self.num_envs}")
        if len(set(ids)) != len(ids) or not all(isinstance(i, int) and 0 <= i < self.num_envs for i in ids):
            raise DataError(f"env_ids must be distinct ints in [0, {self.num_envs}), got {ids}")
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
