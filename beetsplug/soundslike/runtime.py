"""The fast model path on CPU: the loaded model exported to ONNX, its
matrix products quantised to int8, run by ONNX Runtime.

Why (measured in ``bench/embed_runtime.py``, docs/benchmarks.md): on a CPU
the model's time goes to matrix products, and int8 products run several
times faster than float32 ones on any x86-64 with AVX2 (more with VNNI) and
on ARM. torch's own dynamic quantisation covers only the transformer's
linear layers; the convolutional feature encoder (a third of the work) stays
float32 and bounds the gain. Here the encoder's convolutions are rewritten
as the same products over sliding windows (:class:`WindowedConv`,
identical up to float rounding), so ONNX Runtime quantises them too, and
its graph optimiser fuses attention, normalisation and GELU. Each window
is divided by its largest magnitude before the product and the result
multiplied back (``product`` of :func:`WindowedConv`): int8 activations
have one scale per tensor, and without this the frames of quiet passages
lose most of their precision (wav2vec2-base's neighbour lists in ``beet
similar`` then differed in 2 of 10). The first convolution, over raw
audio, stays float32. The positional convolution (128 taps over 16 groups
of channels), which int8 would blur, stays float32 too, but runs through
real DFTs taken as matrix products, block by block (:func:`SpectralConv`):
the same output to float rounding for a fifth of the multiplications.

The export happens once per model and is cached beside the store
(``store_dir/onnx``), under a key of the model (a digest of its
configuration and weights), layer, the onnxruntime version and
:data:`FORMAT` (pooling runs on the graph's output, so it is not part of
the key); written atomically, so a crash leaves no half file, and a
stale export of the same model and layer is removed. Anything that goes
wrong raises :class:`RuntimeUnavailable`; the embedder then falls back to
torch with one log line.

torch and onnxruntime are imported only in the functions that need them.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging as std_logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from beets import logging

from .files import write_atomic
from .settings import ModelSpec, path_slug

log = logging.getLogger("beets.soundslike")

#: Excerpts per ONNX Runtime call (see :meth:`OnnxEncoder.__call__`).
ROWS_PER_RUN = 2

#: Bump when the exported graph or its quantisation changes: older cached
#: exports are redone. 2: row-scaled convolutions, the first one float.
#: 3: the first convolution's bias folded into its product (the same
#: output, 11% faster for wav2vec2-large). 4: the positional convolution
#: through DFTs (:func:`SpectralConv`).
FORMAT = 4

#: Where the export's graph names the positional convolution's nodes
#: (torch names them by module path, under the exported wrapper's
#: ``model``): its products are DFTs and stay float.
POSITIONAL_SCOPE = "/model/encoder/pos_conv_embed/conv/"

#: Matrix products over at most this many inputs stay float32: the first
#: convolution's windows of raw audio (10 samples in Wav2Vec2). In int8 the
#: audio would be rounded to 8 bits, so a passage 48 dB below the
#: excerpt's peak would be lost, and a product this small gains nothing.
FLOAT_PRODUCT_INPUTS = 16

#: ONNX Runtime's errors for a model file that cannot be parsed or makes no
#: valid graph: a cached export damaged on disk, which is exported again
#: (any other failure falls back to torch).
DAMAGED_EXPORT = ("InvalidProtobuf", "InvalidGraph", "InvalidArgument")


class RuntimeUnavailable(Exception):
    """The ONNX path cannot be used here; the message says why."""


def onnx_available() -> bool:
    """True when onnxruntime and onnx are installed (nothing is imported)."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))


def onnxruntime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


class OnnxEncoder:
    """An ONNX Runtime session that maps a batch of excerpts (B, samples)
    to the hidden states of the configured layer (B, frames, hidden)."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = path
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or max(1, os.cpu_count() or 1)
        options.log_severity_level = 3  # errors only: no optimiser chatter
        # Threads sleep instead of spinning between operators: the decoders
        # of the next tracks get those cycles (faster on a busy machine).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        inputs = np.ascontiguousarray(batch, dtype=np.float32)
        # A few excerpts per call: as fast on a CPU as a batch of 8 (each
        # excerpt is already 500 rows of every matrix product) and a
        # fraction of the activation memory.
        parts = [
            self.session.run(None, {"audio": inputs[start:start + ROWS_PER_RUN]})[0]
            for start in range(0, len(inputs), ROWS_PER_RUN)
        ]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def prepare(
    model,
    hidden_states: Callable,
    spec: ModelSpec,
    cache_dir: Path | None,
    quantize: bool = True,
) -> OnnxEncoder:
    """The ONNX encoder for ``model`` (already truncated and in eval mode):
    from the cache in ``cache_dir`` when it is there, else exported now and
    cached. ``hidden_states(model, inputs)`` is the torch computation to
    export. Raises :class:`RuntimeUnavailable`."""
    if not onnx_available():
        raise RuntimeUnavailable("onnxruntime is not installed (pip install onnxruntime onnx)")
    try:
        if cache_dir is None:
            scratch = tempfile.mkdtemp(prefix="soundslike-onnx-")
            try:
                path = Path(scratch) / "model.onnx"
                _export(model, hidden_states, path, quantize)
                return OnnxEncoder(path)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        cache_dir.mkdir(parents=True, exist_ok=True)
        prefix = f"{path_slug(spec.model)}_l{spec.layer}_"
        path = cache_dir / (prefix + cache_key(model, spec, quantize) + ".onnx")
        if path.is_file():
            try:
                return OnnxEncoder(path)
            except Exception as exc:  # noqa: BLE001 - only a damaged file is made again
                if type(exc).__name__ not in DAMAGED_EXPORT:
                    raise
                log.info("the cached fast CPU model is damaged: preparing it again")
        else:
            log.info("preparing the fast CPU model (once for this model)")
        _export(model, hidden_states, path, quantize)
        _remove_stale(cache_dir, prefix, path)
        return OnnxEncoder(path)
    except RuntimeUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure means: use torch
        text = str(exc).strip().splitlines()
        reason = (text[0] if text else type(exc).__name__)[:200]
        raise RuntimeUnavailable(f"{type(exc).__name__}: {reason}") from exc


def cache_key(model, spec: ModelSpec, quantize: bool) -> str:
    """What the cached export depends on, as a file-name-safe string."""
    kind = ("int8r" if reduce_range() else "int8") if quantize else "fp32"
    return (
        f"{weights_digest(model)}_ort{onnxruntime_version()}"
        f"_f{FORMAT}_{kind}"
    )


def weights_digest(model) -> str:
    """A digest of the model's configuration and of a sample of every
    weight tensor: a re-saved or fine-tuned checkpoint in the same folder
    gets a new export. Sampling keeps it at milliseconds for large models."""
    digest = hashlib.sha256(model.config.to_json_string().encode("utf-8"))
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // 1024)
        digest.update(name.encode("utf-8"))
        digest.update(repr(tuple(tensor.shape)).encode("ascii"))
        digest.update(flat[::step].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def reduce_range() -> bool:
    """Quantise weights to 7 bits on x86-64 CPUs without VNNI, where
    ONNX Runtime's 8-bit products can saturate (its documented advice)."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            flags = handle.read()
    except OSError:
        return True
    return "avx512_vnni" not in flags and "avx_vnni" not in flags


def _export(model, hidden_states: Callable, path: Path, quantize: bool) -> None:
    """Export (and quantise) into a scratch folder beside ``path``, then
    move the result into place atomically."""
    import torch

    scratch = tempfile.mkdtemp(prefix=".export-", dir=path.parent)
    try:
        float_path = os.path.join(scratch, "float.onnx")
        encoder = model.feature_extractor if hasattr(model, "feature_extractor") else None
        windowed = windowed_encoder(encoder) if encoder is not None else None
        positional = getattr(getattr(model, "encoder", None), "pos_conv_embed", None)
        spectral = spectral_conv(getattr(positional, "conv", None))

        class Graph(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, audio):
                return hidden_states(self.model, audio)

        example = torch.zeros(2, 32000).normal_(generator=torch.Generator().manual_seed(0))
        if windowed is not None:
            model.feature_extractor = windowed
        if spectral is not None:
            original, positional.conv = positional.conv, spectral
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    Graph().eval(), (example,), float_path, input_names=["audio"],
                    output_names=["hidden"], opset_version=17, dynamo=False,
                    dynamic_axes={
                        "audio": {0: "batch", 1: "samples"},
                        "hidden": {0: "batch", 1: "frames"},
                    },
                )
        finally:
            if windowed is not None:
                model.feature_extractor = encoder
            if spectral is not None:
                positional.conv = original
        result = float_path
        if quantize:
            result = os.path.join(scratch, "int8.onnx")
            _quantize(float_path, result)
        with open(result, "rb") as source:
            write_atomic(path, lambda handle: shutil.copyfileobj(source, handle, 1 << 22))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _quantize(source: str, target: str) -> None:
    """int8 dynamic quantisation of the matrix products (weights int8,
    activations quantised per call at run time), but for the small ones of
    :func:`float_products`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    keep = float_products(source)
    # The quantiser logs advice on the root logger; it is not for users.
    # It logs with ``logging.warning``, which first configures a root
    # logger that has no handler (``basicConfig``): every beets line after
    # it was printed twice. A handler that drops records keeps it as it was.
    root, dropped = std_logging.getLogger(), std_logging.NullHandler()
    root.addHandler(dropped)
    std_logging.disable(std_logging.WARNING)
    try:
        quantize_dynamic(
            source, target, weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"], reduce_range=reduce_range(),
            nodes_to_exclude=keep,
        )
    finally:
        std_logging.disable(std_logging.NOTSET)
        root.removeHandler(dropped)


def float_products(path: str) -> list[str]:
    """Names of the graph's matrix products with a constant weight of at
    most :data:`FLOAT_PRODUCT_INPUTS` rows (inputs), which stay float."""
    import onnx

    graph = onnx.load(path).graph
    rows = {tensor.name: tensor.dims[0] for tensor in graph.initializer if tensor.dims}
    return [
        node.name for node in graph.node
        if node.op_type == "MatMul" and len(node.input) == 2 and (
            rows.get(node.input[1], FLOAT_PRODUCT_INPUTS + 1) <= FLOAT_PRODUCT_INPUTS
            or node.name.startswith(POSITIONAL_SCOPE)
        )
    ]


def _remove_stale(cache_dir: Path, prefix: str, keep: Path) -> None:
    """Older exports of the same model and layer (other weights, another
    onnxruntime or format) are never read again."""
    for old in cache_dir.glob(prefix + "*.onnx"):
        if old != keep:
            try:
                old.unlink()
            except OSError:
                pass


def windowed_encoder(encoder):
    """The Wav2Vec2-family convolutional feature encoder rebuilt with
    :class:`WindowedConv` in time-major layout, or None when ``encoder``
    has a structure this does not know (then the export keeps it as is)."""
    import torch

    layers = getattr(encoder, "conv_layers", None)
    if layers is None:
        return None
    stages = []
    for layer in layers:
        conv = getattr(layer, "conv", None)
        norm = getattr(layer, "layer_norm", None)
        activation = getattr(layer, "activation", None)
        if not isinstance(conv, torch.nn.Conv1d) or activation is None:
            return None
        if conv.groups != 1 or conv.padding != (0,) or conv.dilation != (1,):
            return None
        if norm is not None and not isinstance(norm, (torch.nn.LayerNorm, torch.nn.GroupNorm)):
            return None
        if isinstance(norm, torch.nn.GroupNorm) and norm.num_groups != norm.num_channels:
            return None
        stages.append((conv, norm, activation))
    return WindowedEncoder(stages)


def spectral_conv(conv):
    """:func:`SpectralConv` of ``conv``, or None unless ``conv`` is a
    Conv1d of stride 1 padded with zeros by half its kernel (then the
    export keeps it as it is)."""
    import torch

    if not isinstance(conv, torch.nn.Conv1d) or conv.padding_mode != "zeros":
        return None
    kernel = conv.kernel_size[0]
    if conv.stride != (1,) or conv.dilation != (1,) or conv.padding != (kernel // 2,):
        return None
    if kernel < 2:
        return None
    return SpectralConv(conv)


@functools.lru_cache(maxsize=None)
def _module_classes():
    """The torch modules below, defined on first use so that importing this
    module does not import torch."""
    import torch

    class WindowedConvModule(torch.nn.Module):
        """A Conv1d (no padding, no groups) on time-major input (B, T, C) as
        matrix products over its sliding windows. Where the kernel is the
        stride (k = s) or one more (k = s + 1, Wav2Vec2's 3/2 layers) the
        windows are a free reshape of the input plus, for k = s + 1, one
        strided slice for the last tap; otherwise the windows are stacked."""

        def __init__(self, conv, row_scale: bool) -> None:
            super().__init__()
            out_channels, in_channels, kernel = conv.weight.shape
            self.kernel, self.stride = kernel, conv.stride[0]
            self.channels = in_channels
            self.row_scale = row_scale
            weight = conv.weight.permute(0, 2, 1).reshape(out_channels, kernel * in_channels)
            self.split = kernel in (self.stride, self.stride + 1) and in_channels > 1
            head = self.stride * in_channels if self.split else kernel * in_channels
            # A float product (not row-scaled) over stacked windows takes its
            # bias as one more input column of ones: one pass over its large
            # output instead of two (the product, then the bias added).
            self.fold_bias = conv.bias is not None and not self.split and not row_scale
            if self.fold_bias:
                weight = torch.cat([weight, conv.bias[:, None]], dim=1)
            columns = head + 1 if self.fold_bias else head
            self.linear = torch.nn.Linear(
                columns, out_channels, bias=conv.bias is not None and not self.fold_bias
            )
            self.tail = None
            with torch.no_grad():
                self.linear.weight.copy_(weight[:, :columns])
                if self.linear.bias is not None:
                    self.linear.bias.copy_(conv.bias)
                if self.split and head < weight.shape[1]:
                    self.tail = torch.nn.Linear(in_channels, out_channels, bias=False)
                    self.tail.weight.copy_(weight[:, head:])

        def forward(self, x):
            frames = (x.shape[1] - self.kernel) // self.stride + 1
            if not self.split:
                span = self.stride * (frames - 1) + 1
                taps = [x[:, j:j + span:self.stride] for j in range(self.kernel)]
                if self.fold_bias:
                    taps.append(torch.ones_like(taps[0][:, :, :1]))
                windows = torch.cat(taps, dim=2)
                return self.product(self.linear, windows)
            head = x[:, :frames * self.stride].reshape(
                x.shape[0], frames, self.stride * self.channels
            )
            out = self.product(self.linear, head)
            if self.tail is not None:
                last = x[:, self.stride:self.stride * frames + 1:self.stride]
                out = out + self.product(self.tail, last)
            return out

        def product(self, linear, rows):
            """``linear(rows)``; with ``row_scale``, computed as
            (rows / r) W^T * r + b with r the largest magnitude of each
            row: the same up to float rounding, but every row of the
            product's input spans the same range, so int8 dynamic
            quantisation (one scale for the whole tensor) rounds the
            frames of a quiet passage as finely as those of a loud one."""
            if not self.row_scale:
                return linear(rows)
            # max(max, -min) rather than max(abs): two reads, no tensor written
            largest = torch.maximum(
                rows.amax(dim=2, keepdim=True), -rows.amin(dim=2, keepdim=True)
            )
            scale = torch.clamp(largest, min=1e-20)
            out = torch.nn.functional.linear(rows * (1.0 / scale), linear.weight) * scale
            return out if linear.bias is None else out + linear.bias

    class WindowedEncoderModule(torch.nn.Module):
        """The feature encoder in time-major layout; returns (B, C, T) like
        the original."""

        def __init__(self, stages) -> None:
            super().__init__()
            # Every convolution over more than one channel scales its
            # windows (see product): the frames of a quiet passage are small
            # after a GroupNorm over time (wav2vec2-base) or no norm, and
            # also after a LayerNorm when they are below its epsilon. The
            # first convolution's input is the audio, one channel: its
            # product stays float instead (see FLOAT_PRODUCT_INPUTS).
            self.convs = torch.nn.ModuleList(
                WindowedConvModule(conv, row_scale=conv.in_channels > 1)
                for conv, _, _ in stages
            )
            self.norms = torch.nn.ModuleList(
                n if n is not None else torch.nn.Identity() for _, n, _ in stages
            )
            self.activations = [a for _, _, a in stages]

        def forward(self, audio):
            hidden = audio[:, :, None]
            for conv, norm, activation in zip(self.convs, self.norms, self.activations):
                hidden = conv(hidden)
                if isinstance(norm, torch.nn.GroupNorm):
                    # one group per channel: normalise each channel over time
                    mean = hidden.mean(dim=1, keepdim=True)
                    centred = hidden - mean
                    var = (centred * centred).mean(dim=1, keepdim=True)
                    hidden = centred / torch.sqrt(var + norm.eps) * norm.weight + norm.bias
                else:
                    hidden = norm(hidden)
                hidden = activation(hidden)
            return hidden.transpose(1, 2)

    class SpectralConvModule(torch.nn.Module):
        """A Conv1d of stride 1, padded by K // 2 on both sides (input (B,
        C, T), output (B, C, T + 1 - K % 2)), computed by overlap-add: the
        input cut in blocks of K samples, each block's real DFT of N = 2K - 1
        points (a product with a constant matrix), the groups' channels
        mixed frequency by frequency with the kernel's spectrum (complex,
        as real products), the inverse DFT (a product), and the blocks'
        overlapping tails added. For wav2vec2's 128 taps this is about a
        fifth of the direct convolution's multiplications."""

        def __init__(self, conv) -> None:
            super().__init__()
            channels, per_group, kernel = conv.weight.shape
            groups = conv.groups
            block, points = kernel, 2 * kernel - 1
            freqs = points // 2 + 1
            self.groups, self.per_group, self.kernel = groups, per_group, kernel
            self.freqs = freqs
            n = torch.arange(points, dtype=torch.float64)
            angle = 2 * torch.pi * torch.outer(n, torch.arange(freqs, dtype=torch.float64)) / points
            # Forward DFT of a block (its other points are zero): (K, 2F).
            forward = torch.cat([torch.cos(angle[:block]), -torch.sin(angle[:block])], dim=1)
            # Inverse real DFT: (2F, N); the bins between 0 and N/2 count twice.
            twice = torch.full((freqs,), 2.0, dtype=torch.float64)
            twice[0] = 1.0
            inverse = torch.cat([twice[:, None] * torch.cos(angle.T),
                                 -twice[:, None] * torch.sin(angle.T)], dim=0) / points
            with torch.no_grad():
                # A correlation is a convolution with the kernel reversed.
                taps = torch.zeros(channels, per_group, points, dtype=torch.float64)
                taps[..., :kernel] = torch.flip(conv.weight.detach().double(), [2])
                spectrum = torch.fft.rfft(taps, dim=-1).reshape(
                    groups, per_group, per_group, freqs).permute(0, 3, 1, 2)  # (G, F, out, in)
                self.register_buffer("forward_dft", forward.float())
                self.register_buffer("inverse_dft", inverse.float())
                self.register_buffer("real", spectrum.real.float().contiguous())
                self.register_buffer("imag", spectrum.imag.float().contiguous())
                bias = conv.bias.detach().clone() if conv.bias is not None else None
                self.register_buffer("bias", bias)

        def forward(self, x):
            batch, channels, frames = x.shape
            groups, per_group, freqs = self.groups, self.per_group, self.freqs
            block = self.kernel  # blocks as long as the kernel
            blocks = (frames + block - 1) // block
            spectra = torch.nn.functional.pad(x, (0, blocks * block - frames)).reshape(
                batch, channels, blocks, block) @ self.forward_dft  # (B, C, nb, 2F)

            # (B, G, C/G, nb, [re, im], F) -> (G, F, [re, im] C/G, B nb)
            spectra = spectra.reshape(batch, groups, per_group, blocks, 2, freqs).permute(
                1, 5, 4, 2, 0, 3).reshape(groups, freqs, 2 * per_group, batch * blocks)
            re, im = spectra[:, :, :per_group], spectra[:, :, per_group:]
            mixed = torch.cat([self.real @ re - self.imag @ im,
                               self.real @ im + self.imag @ re], dim=2).reshape(
                groups, freqs, 2, per_group, batch, blocks).permute(
                4, 0, 3, 5, 2, 1).reshape(batch, channels, blocks, 2 * freqs)
            out = mixed @ self.inverse_dft  # (B, C, nb, N): each block's full convolution
            head, tail = out[..., :block], out[..., block:]  # tail: the next block's first K - 1
            tail = torch.nn.functional.pad(tail, (0, 1, 0, 0))  # to K samples
            carried = torch.nn.functional.pad(tail, (0, 0, 1, 0))[:, :, :blocks]
            whole = torch.cat([(head + carried).reshape(batch, channels, blocks * block),
                               out[:, :, -1, block:]], dim=2)
            start = self.kernel - 1 - self.kernel // 2
            result = whole[:, :, start:start + frames + 1 - self.kernel % 2]
            return result if self.bias is None else result + self.bias[None, :, None]

    return WindowedConvModule, WindowedEncoderModule, SpectralConvModule


def SpectralConv(conv):  # noqa: N802 - a class factory
    """A torch module computing ``conv`` (stride 1, padded by half its
    kernel) through DFTs taken as matrix products, block by block."""
    return _module_classes()[2](conv)


def WindowedConv(conv, row_scale: bool = False):  # noqa: N802 - a class factory
    """A torch module computing ``conv`` over time-major input as a matrix
    product of its windows (each window scaled to one range with
    ``row_scale``)."""
    return _module_classes()[0](conv, row_scale)


def WindowedEncoder(stages):  # noqa: N802 - a class factory
    """The feature encoder rebuilt from (conv, norm, activation) stages."""
    return _module_classes()[1](stages)


def pool(hidden: np.ndarray, pooling: str) -> np.ndarray:
    """Pooled hidden states (B, frames, H) as the torch path pools them:
    the mean over time, or the L2-normalised mean and (unbiased) standard
    deviation side by side."""
    hidden = hidden.astype(np.float32, copy=False)
    mean = hidden.mean(axis=1)
    if pooling != "meanstd":
        return mean
    std = hidden.std(axis=1, ddof=1)
    return np.concatenate([_rows_l2(mean), _rows_l2(std)], axis=1).astype(np.float32)


def _rows_l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
