"""Turn audio into one "sounds like" vector per track with a Wav2Vec2 model.

The model is any Wav2Vec2-family checkpoint (wav2vec2, HuBERT, WavLM,
data2vec-audio, ...) loaded with ``from_pretrained`` from a hub id or a
local folder. torch and transformers are imported only when an
:class:`Embedder` is created, so commands that never embed start fast.

Why the vector is built the way it is:

* **Excerpts, not whole tracks.** A CPU runs Wav2Vec2-large at about 2x
  realtime; a whole album would take hours. A few fixed-length excerpts
  spread over the track (see :func:`audio.pick_excerpts`) describe its sound
  well and bound the cost per track whatever its length.
* **A middle layer, truncated.** Middle transformer layers of speech
  models carry timbre and texture; the top layers specialise in phonemes.
  Layers above the chosen one are removed from the model, so they cost
  nothing.
* **Pooling over time** (mean, or mean and standard deviation), then the
  mean over excerpts and L2 normalisation, so cosine similarity in Qdrant
  compares tracks of any length fairly.
"""

from __future__ import annotations

from beets import logging
import os
from collections.abc import Sequence

import numpy as np

from .audio import SAMPLE_RATE, pick_excerpts
from .settings import ModelSpec

log = logging.getLogger("beets.soundslike")

#: Model types the plugin knows to be Wav2Vec2-family encoders.
AUDIO_MODEL_TYPES = {
    "wav2vec2", "wav2vec2-conformer", "wav2vec2-bert", "hubert", "wavlm",
    "data2vec-audio", "unispeech", "unispeech-sat", "sew", "sew-d",
}


class ModelError(Exception):
    """The configured model cannot be loaded or run; says which option."""


class Embedder:
    """A loaded model that maps decoded audio to track vectors."""

    def __init__(
        self,
        spec: ModelSpec,
        device: str = "auto",
        quantize: bool = False,
        excerpts: int = 3,
        excerpt_seconds: float = 10.0,
    ) -> None:
        self.spec = spec
        self.excerpts = excerpts
        self.excerpt_seconds = excerpt_seconds
        try:
            import torch
        except ImportError as exc:  # pragma: no cover - dependency
            raise ModelError(
                f"torch is not installed ({exc}): pip install torch"
            ) from exc
        self._torch = torch
        self.device = _resolve_device(torch, device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, os.cpu_count() or 1))
        self.model, self.normalize, self.dim_per_pool = _load_model(
            spec, self.device, self.dtype, quantize
        )

    @property
    def dim(self) -> int:
        """Length of the vectors this embedder produces."""
        return self.dim_per_pool * (2 if self.spec.pooling == "meanstd" else 1)

    def embed(self, samples: np.ndarray) -> np.ndarray:
        """One L2-normalised vector for a track's 16 kHz mono samples."""
        return self.embed_many([samples])[0]

    def embed_many(
        self, tracks: Sequence[np.ndarray], batch_size: int = 8
    ) -> list[np.ndarray]:
        """Vectors for several tracks, running excerpts of equal length
        together in batches of ``batch_size``."""
        windows: list[tuple[int, np.ndarray]] = []
        for index, samples in enumerate(tracks):
            for window in pick_excerpts(
                samples, self.excerpts, self.excerpt_seconds, SAMPLE_RATE
            ):
                windows.append((index, window))

        by_length: dict[int, list[tuple[int, np.ndarray]]] = {}
        for index, window in windows:
            by_length.setdefault(len(window), []).append((index, window))

        pooled: list[list[np.ndarray]] = [[] for _ in tracks]
        for group in by_length.values():
            for start in range(0, len(group), batch_size):
                chunk = group[start:start + batch_size]
                batch = np.stack([w for _, w in chunk])
                for (index, _), vector in zip(chunk, self.forward(batch)):
                    pooled[index].append(vector)

        return [_l2(np.mean(np.stack(p), axis=0)) for p in pooled]

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """Pooled hidden states of the configured layer for each row of
        ``batch`` (excerpts of equal length), as float32 numpy."""
        torch = self._torch
        if self.normalize:
            mean = batch.mean(axis=1, keepdims=True)
            std = batch.std(axis=1, keepdims=True)
            batch = (batch - mean) / np.sqrt(std * std + 1e-7)
        inputs = torch.from_numpy(np.ascontiguousarray(batch, np.float32))
        inputs = inputs.to(self.device, self.dtype)
        with torch.inference_mode():
            hidden = _layer_output(self.model, inputs, self.spec.layer)
            hidden = hidden.float()
            mean = hidden.mean(dim=1)
            if self.spec.pooling == "meanstd":
                std = hidden.std(dim=1)
                pooled = torch.cat(
                    [_torch_l2(torch, mean), _torch_l2(torch, std)], dim=1
                )
            else:
                pooled = mean
        return pooled.cpu().numpy().astype(np.float32)


def _resolve_device(torch, device: str):
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError(
            "soundslike.device is cuda, but torch sees no CUDA GPU: "
            "set device: auto or cpu"
        )
    if device == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ModelError(
            "soundslike.device is mps, but this machine has no Apple GPU: "
            "set device: auto or cpu"
        )
    return torch.device(device)


def _load_model(spec: ModelSpec, device, dtype, quantize: bool):
    """Load, truncate and prepare the model; return (model, normalize,
    hidden size)."""
    try:
        from transformers import AutoConfig, AutoFeatureExtractor, AutoModel
        from transformers.utils import logging as hf_logging
    except ImportError as exc:  # pragma: no cover - dependency
        raise ModelError(f"transformers is not installed ({exc})") from exc

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    source = os.path.expanduser(spec.model)
    where = (
        f"soundslike.model: {spec.model!r}"
    )
    try:
        config = AutoConfig.from_pretrained(source)
    except Exception as exc:  # noqa: BLE001 - any loader failure is the same to the user
        raise ModelError(
            f"cannot load {where}: {_short(exc)} "
            "(a hub id needs internet or a cached copy; a folder needs "
            "config.json and weights saved by save_pretrained)"
        ) from exc
    model_type = getattr(config, "model_type", "")
    if model_type not in AUDIO_MODEL_TYPES:
        raise ModelError(
            f"{where} is a {model_type or 'unknown'} model, not a "
            "Wav2Vec2-family audio encoder"
        )
    total_layers = int(getattr(config, "num_hidden_layers", 0))
    if spec.layer > total_layers:
        raise ModelError(
            f"soundslike.layer is {spec.layer} but {spec.model} has "
            f"{total_layers} layers: choose 0..{total_layers}"
        )
    try:
        model = AutoModel.from_pretrained(source)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"cannot load weights for {where}: {_short(exc)}") from exc

    try:
        extractor = AutoFeatureExtractor.from_pretrained(source)
        normalize = bool(getattr(extractor, "do_normalize", True))
        rate = int(getattr(extractor, "sampling_rate", SAMPLE_RATE))
        if rate != SAMPLE_RATE:
            raise ModelError(
                f"{where} expects {rate} Hz audio; the plugin feeds "
                f"{SAMPLE_RATE} Hz (Wav2Vec2-family models)"
            )
    except ModelError:
        raise
    except Exception:  # noqa: BLE001 - checkpoints without a preprocessor
        normalize = True  # Wav2Vec2FeatureExtractor's default

    _truncate(model, spec.layer, total_layers)
    model.eval()
    if quantize and device.type == "cpu":
        model = _quantize(model)
    else:
        model.to(device=device, dtype=dtype)
    return model, normalize, int(config.hidden_size)


def _truncate(model, layer: int, total_layers: int) -> None:
    """Drop the transformer layers above ``layer``: their output is never
    used. For pre-norm ("stable layer norm") encoders the final norm belongs
    to the top of the stack, so it goes too unless the top layer is kept."""
    encoder = getattr(model, "encoder", None)
    layers = getattr(encoder, "layers", None)
    if layers is None or layer >= total_layers:
        return
    import torch

    encoder.layers = torch.nn.ModuleList(list(layers)[:layer])
    if getattr(model.config, "do_stable_layer_norm", False) and hasattr(
        encoder, "layer_norm"
    ):
        encoder.layer_norm = torch.nn.Identity()
    model.config.num_hidden_layers = layer


def _layer_output(model, inputs, layer: int):
    """Hidden states after transformer layer ``layer``: the top of the
    truncated model, or the matching entry of ``hidden_states`` for
    encoders that could not be truncated."""
    if len(getattr(getattr(model, "encoder", None), "layers", ())) == layer:
        return model(inputs).last_hidden_state
    return model(inputs, output_hidden_states=True).hidden_states[layer]


def _quantize(model):
    """int8 dynamic quantisation of the linear layers (CPU only)."""
    import torch

    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError:  # pragma: no cover - very old or very new torch
        log.warning("this torch cannot quantize; using float32")
        return model
    return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def _torch_l2(torch, x):
    return x / torch.clamp(torch.linalg.vector_norm(x, dim=1, keepdim=True), min=1e-12)


def _l2(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return (vector / norm if norm > 0 else vector).astype(np.float32)


def _short(exc: Exception) -> str:
    """First line of an exception message, without the library's advice."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]
