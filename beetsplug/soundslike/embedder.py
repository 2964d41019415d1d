"""Turn audio into one "sounds like" vector per track with a Wav2Vec2 model.

The model is any Wav2Vec2-family checkpoint (wav2vec2, HuBERT, WavLM,
data2vec-audio, ...) loaded with ``from_pretrained`` from a hub id or a
local folder. torch and transformers are imported only when an
:class:`Embedder` is created, so commands that never embed start fast, and
not even then on a CPU once the model's int8 export is cached
(:mod:`.onnxcache`).

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

On a CPU the truncated model runs, by default, as an int8 ONNX Runtime
graph exported from it (:mod:`.runtime`, ``runtime: auto``); torch is the
reference and the fallback.
"""

from __future__ import annotations

from beets import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .audio import SAMPLE_RATE, pick_excerpts
from .onnxcache import model_folder, open_cached, remember
from .runtime import RuntimeUnavailable, onnx_available, pool
from .runtime import prepare as prepare_onnx
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
        runtime: str = "torch",
        cache_dir=None,
    ) -> None:
        self.spec = spec
        self.excerpts = excerpts
        self.excerpt_seconds = excerpt_seconds
        cache_dir = None if cache_dir is None else Path(cache_dir)
        # runtime: torch (the reference), onnx (runtime.py: int8 ONNX
        # Runtime, CPU only) or auto (onnx where it can run).
        wants_onnx = runtime == "onnx" or (runtime == "auto" and onnx_available())
        if wants_onnx and cache_dir is not None and _surely_cpu(device):
            opened = open_cached(cache_dir, spec)
            if opened is not None:  # no torch, no checkpoint: the export alone
                self.onnx, self.normalize, self.dim_per_pool = opened
                self._torch = self.model = None
                self.device, self.dtype, self.runtime = None, None, "onnx"
                return
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
        fast = self.device.type == "cpu" and wants_onnx
        self.model, self.normalize, self.dim_per_pool = _load_model(
            spec, self.device, self.dtype, quantize and not fast
        )
        self.onnx = self._fast_path(cache_dir, quantize) if fast else None
        self.runtime = "onnx" if self.onnx is not None else "torch"
        if self.onnx is not None and cache_dir is not None:
            remember(cache_dir, spec, self.onnx.path, self.normalize, self.dim_per_pool)

    def _fast_path(self, cache_dir, quantize: bool):
        """The ONNX encoder, or None (torch goes on, one log line)."""
        try:
            encoder = prepare_onnx(
                self.model, _hidden_states(self.spec.layer), self.spec, cache_dir
            )
        except RuntimeUnavailable as exc:
            log.warning("using torch, the ONNX runtime failed: {}", exc)
            if quantize:
                self.model = _quantize(self.model)
            return None
        # The export holds the weights: free torch's copy now (the model's
        # reference cycles would keep it until a garbage collection).
        self.model = None
        import gc

        gc.collect()
        return encoder

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
        """Vectors for several tracks (their whole samples), running
        excerpts of equal length together in batches of ``batch_size``."""
        return self.embed_excerpts(
            [pick_excerpts(samples, self.excerpts, self.excerpt_seconds, SAMPLE_RATE)
             for samples in tracks],
            batch_size,
        )

    def embed_excerpts(
        self, tracks: Sequence[Sequence[np.ndarray]], batch_size: int = 8
    ) -> list[np.ndarray]:
        """Vectors for several tracks given by their excerpts (those
        :func:`audio.pick_excerpts` picks), batched as :meth:`embed_many`."""
        windows: list[tuple[int, np.ndarray]] = []
        for index, excerpts in enumerate(tracks):
            for window in excerpts:
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
        if self.onnx is not None:
            try:
                hidden = self.onnx(batch)
            except Exception as exc:  # noqa: BLE001 - one line naming the option
                raise ModelError(
                    f"the ONNX runtime failed on a batch ({_short(exc)}): "
                    "set soundslike.runtime: torch"
                ) from exc
            return pool(hidden, self.spec.pooling)
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


#: Device files of the GPUs torch can use on Linux (NVIDIA, AMD ROCm, and
#: WSL's GPU): without any, ``device: auto`` is the CPU, known without
#: importing torch.
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")


def _surely_cpu(device: str) -> bool:
    """True when ``device`` resolves to the CPU whatever torch would say:
    ``cpu``, or ``auto`` with torch's CPU-only build, on a Mac (``auto``
    never picks an Apple GPU) or on Linux without a GPU's device files.
    Elsewhere torch decides."""
    if device == "cpu":
        return True
    if device != "auto":
        return False
    if sys.platform == "darwin" or _torch_build().endswith("+cpu"):
        return True
    return sys.platform.startswith("linux") and not any(
        os.path.exists(path) for path in GPU_DEVICE_FILES
    )


def _torch_build() -> str:
    """The installed torch's version, read from its metadata without
    importing it (the CPU-only wheels say ``+cpu``), or ``""``."""
    try:
        from importlib.metadata import version

        return version("torch")
    except Exception:  # noqa: BLE001 - not installed, unreadable metadata
        return ""


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
    where = f"soundslike.model: {spec.model!r}"
    source, options = locate_model(spec.model)
    downloading = not options and not os.path.isdir(source)
    if downloading:
        # A hub model not in the cache: the first run downloads it (1.2 GB
        # for the default), which would otherwise look like a hang. The
        # hub's own progress bars show it on a terminal.
        log.info("downloading {} from the Hugging Face hub (once)", spec.model)
        from huggingface_hub.utils import enable_progress_bars

        enable_progress_bars()
    try:
        config = AutoConfig.from_pretrained(source, **options)
    except Exception as exc:  # noqa: BLE001 - any loader failure is the same to the user
        if downloading:
            raise _download_failed(where, exc) from exc
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
        model = AutoModel.from_pretrained(source, **options)
    except Exception as exc:  # noqa: BLE001
        if downloading:
            raise _download_failed(where, exc) from exc
        raise ModelError(f"cannot load weights for {where}: {_short(exc)}") from exc

    try:
        extractor = AutoFeatureExtractor.from_pretrained(source, **options)
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


#: Weight files ``from_pretrained`` reads, one of which a cached hub model has.
WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json",
    "pytorch_model.bin", "pytorch_model.bin.index.json",
)
#: What a working model option is, for the messages below.
MODEL_ADVICE = "a folder saved by save_pretrained, or a hub id like facebook/wav2vec2-base"


def locate_model(model: str) -> tuple[str, dict]:
    """Where ``from_pretrained`` finds ``model`` and the options it needs.

    Decided before transformers is asked, so that every way of getting it
    wrong is one :class:`ModelError` line at once: a folder that does not
    exist, a file, a folder without config.json, a hub id that is neither
    cached nor reachable (transformers itself would retry the hub for
    about 30 s, logging each try, and then blame the network even for a
    misspelt path). A hub model in the local cache is loaded from it
    without asking the hub, so an offline machine starts at once.
    """
    source = os.path.expanduser(model)
    if os.path.isdir(source):
        if not os.path.isfile(os.path.join(source, "config.json")):
            raise ModelError(
                f"cannot load soundslike.model: the folder {source} has no config.json "
                f"(set {MODEL_ADVICE})"
            )
        return source, {}
    if os.path.exists(source):
        raise ModelError(
            f"cannot load soundslike.model: {source} is a file, not a model folder "
            f"(set {MODEL_ADVICE})"
        )
    if not _is_hub_id(model):
        raise ModelError(
            f"cannot load soundslike.model: the folder {source} does not exist "
            f"(set {MODEL_ADVICE})"
        )
    if _hub_cached(model):
        return model, {"local_files_only": True}
    _reach_hub(model, f"soundslike.model: {model!r}")
    return model, {}


def _is_hub_id(model: str) -> bool:
    """True when ``model`` has the form of a hub id (``name`` or
    ``owner/name``); anything else can only be meant as a folder."""
    if model.startswith(("~", ".", "/")) or "\\" in model:
        return False
    try:
        from huggingface_hub.utils import HFValidationError, validate_repo_id
    except ImportError:  # pragma: no cover - very old huggingface_hub
        return model.count("/") <= 1
    try:
        validate_repo_id(model)
    except HFValidationError:
        return False
    return True


def _hub_cached(model: str) -> bool:
    """True when the local Hugging Face cache holds the model's config and
    weights (no network is asked)."""
    folder = model_folder(model)  # the cached snapshot, found by its config
    return folder is not None and any(
        os.path.isfile(os.path.join(folder, name)) for name in WEIGHT_FILES
    )


def _reach_hub(model: str, where: str) -> None:
    """Ask the hub once, without retries, for the model's config.json:
    a :class:`ModelError` when the hub cannot be reached or has no such
    model, before transformers starts its retries."""
    try:
        from huggingface_hub import constants, errors, get_hf_file_metadata, hf_hub_url
    except ImportError:  # pragma: no cover - very old huggingface_hub
        return
    missing = "neither a folder here nor a model in the Hugging Face cache"
    fetch = "download it once while online, or set a folder saved by save_pretrained"
    if constants.is_offline_mode():
        raise ModelError(
            f"cannot load {where}: {missing}, and HF_HUB_OFFLINE is set: {fetch}"
        )
    try:
        get_hf_file_metadata(
            hf_hub_url(model, "config.json"), timeout=constants.HF_HUB_ETAG_TIMEOUT
        )
    except errors.GatedRepoError as exc:
        raise ModelError(
            f"cannot load {where}: the model is gated on the Hugging Face hub: "
            "accept its terms there and log in with 'hf auth login'"
        ) from exc
    except errors.RepositoryNotFoundError as exc:
        raise ModelError(
            f"cannot load {where}: {missing}, and the Hugging Face hub has no "
            "model of that name (a private one needs 'hf auth login')"
        ) from exc
    except errors.EntryNotFoundError as exc:
        raise ModelError(
            f"cannot load {where}: the model on the Hugging Face hub has no "
            "config.json: it is not a transformers model"
        ) from exc
    except errors.HfHubHTTPError as exc:
        raise ModelError(
            f"cannot load {where}: the Hugging Face hub answered {_short(exc)}"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - any network failure: one line
        raise ModelError(
            f"cannot load {where}: {missing}, and the Hugging Face hub "
            f"({constants.ENDPOINT}) cannot be reached ({_short(exc)}): {fetch}"
        ) from exc


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


def _hidden_states(layer: int):
    """``_layer_output`` for ``layer``, as the ONNX export calls it."""
    return lambda model, inputs: _layer_output(model, inputs, layer)


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


def _download_failed(where: str, exc: Exception) -> ModelError:
    """The error for a hub download that broke off: the network's reason
    (the first cause, not transformers' advice about folders), and that
    the next run resumes it (the hub keeps what arrived)."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    return ModelError(
        f"cannot load {where}: the download from the Hugging Face hub failed "
        f"({_short(exc)}): run the command again to resume it"
    )


def _short(exc: Exception) -> str:
    """First line of an exception message, without the library's advice."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]
