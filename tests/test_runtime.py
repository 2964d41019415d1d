"""The ONNX Runtime path (runtime.py): its vectors agree with torch's, its
export is cached beside the store and reused, a failing export falls back
to torch with one log line, and ``runtime: torch | onnx | auto`` all work
through ``beet embed`` on a real library."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import FORMATS, copy_pieces, gen_audio, tiny_model, user_error

from beetsplug.soundslike.embedder import Embedder
from beetsplug.soundslike.settings import ModelSpec

PIECES = [f"piece{i}{FORMATS[i % len(FORMATS)]}" for i in range(6)]


def tracks(count: int = 4, seconds: float = 20.0) -> list[np.ndarray]:
    return [gen_audio.piece(seed, seconds, rate=16000).astype(np.float32)
            for seed in range(count)]


@pytest.mark.parametrize("stable", [False, True])
@pytest.mark.parametrize("pooling", ["mean", "meanstd"])
def test_onnx_vectors_match_torch(tmp_path, stable, pooling, plugin_log):
    """Both Wav2Vec2 layouts (post-norm like base, pre-norm like large),
    both poolings, excerpts of several lengths in one run."""
    folder = tiny_model.build_tiny_model(str(tmp_path / "model"), layers=3, hidden=64,
                                         stable_layer_norm=stable)
    spec = ModelSpec(folder, 2, pooling)
    options = dict(device="cpu", excerpts=2, excerpt_seconds=4.0)
    torch_path = Embedder(spec, **options)
    onnx_path = Embedder(spec, runtime="onnx", cache_dir=tmp_path / "onnx", **options)
    assert (torch_path.runtime, onnx_path.runtime) == ("torch", "onnx")
    assert onnx_path.dim == torch_path.dim

    audio = tracks() + [gen_audio.piece(9, 2.5, rate=16000).astype(np.float32)]
    for a, b in zip(torch_path.embed_many(audio), onnx_path.embed_many(audio)):
        assert a.shape == b.shape
        assert float(np.dot(a, b)) >= 0.995
        assert abs(float(np.linalg.norm(b)) - 1.0) < 1e-5
    assert not [line for line in plugin_log if "using torch" in line]

    # The positional convolution runs through DFTs, whose products stay float.
    import onnx

    from beetsplug.soundslike.runtime import POSITIONAL_SCOPE

    nodes = onnx.load(str(onnx_path.onnx.path)).graph.node
    positional = [node.op_type for node in nodes if node.name.startswith(POSITIONAL_SCOPE)]
    assert positional.count("MatMul") >= 3 and "Conv" not in positional
    assert "MatMulInteger" not in positional and "DynamicQuantizeLinear" not in positional


def test_export_is_cached_and_reused(model_dir, tmp_path, plugin_log):
    spec = ModelSpec(model_dir, 2, "mean")
    cache = tmp_path / "onnx"
    first = Embedder(spec, device="cpu", runtime="onnx", cache_dir=cache)
    files = list(cache.glob("*.onnx"))
    assert len(files) == 1 and files[0] == first.onnx.path
    assert files[0].name.endswith(".onnx") and "_l2_" in files[0].name
    stamp = files[0].stat().st_mtime_ns
    prepared = [line for line in plugin_log if "preparing the fast CPU model" in line]
    assert len(prepared) == 1

    second = Embedder(spec, device="cpu", runtime="onnx", cache_dir=cache)
    assert second.onnx.path == files[0] and files[0].stat().st_mtime_ns == stamp
    assert len([line for line in plugin_log if "preparing" in line]) == 1
    assert not list(cache.glob(".*"))  # no scratch or temporary file left

    # Another layer is another export; a model re-saved with other weights
    # into the same folder replaces its stale export.
    Embedder(ModelSpec(model_dir, 1, "mean"), device="cpu", runtime="onnx", cache_dir=cache)
    assert len(list(cache.glob("*.onnx"))) == 2
    folder = tmp_path / "resaved"
    tiny_model.build_tiny_model(str(folder), layers=3, hidden=64, seed=1)
    Embedder(ModelSpec(str(folder), 2, "mean"), device="cpu", runtime="onnx", cache_dir=cache)
    before = {p.name for p in cache.glob("*.onnx")}
    tiny_model.build_tiny_model(str(folder), layers=3, hidden=64, seed=5)
    Embedder(ModelSpec(str(folder), 2, "mean"), device="cpu", runtime="onnx", cache_dir=cache)
    after = {p.name for p in cache.glob("*.onnx")}
    assert len(after) == len(before) == 3 and after != before


EMBED_IN_A_NEW_PROCESS = """
import json, sys
import numpy as np
from beetsplug.soundslike.embedder import Embedder
from beetsplug.soundslike.settings import ModelSpec
folder, layer, device, cache, audio = sys.argv[1:]
embedder = Embedder(ModelSpec(folder, int(layer), "mean"), device=device, runtime="auto",
                    cache_dir=cache)
vector = embedder.embed(np.load(audio))
print(json.dumps({"vector": vector.tolist(), "runtime": embedder.runtime,
                  "loaded": sorted(m for m in ("torch", "transformers") if m in sys.modules)}))
"""


def embed_in_a_new_process(folder, cache, audio, device="cpu", layer=2) -> dict:
    import json

    out = subprocess.run(
        [sys.executable, "-c", EMBED_IN_A_NEW_PROCESS, str(folder), str(layer), device,
         str(cache), str(audio)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_a_cached_export_opens_without_torch_and_gives_the_same_vectors(model_dir, tmp_path):
    """Once a model is exported, a new process opens the export from its
    record: neither torch nor transformers is imported, and the vectors are
    those of the process that exported it. A copy of the folder is the same
    model, other weights saved into it are not; a record whose export is
    gone is passed over and the model is loaded as before."""
    import json
    import shutil

    from beetsplug.soundslike.embedder import _surely_cpu

    cache, audio = tmp_path / "onnx", tmp_path / "track.npy"
    np.save(audio, tracks(1)[0])
    spec = ModelSpec(model_dir, 2, "mean")
    first = Embedder(spec, device="cpu", runtime="auto", cache_dir=cache)
    assert first.runtime == "onnx"
    want = first.embed(np.load(audio))
    records = list((cache / "records").glob("*.json"))
    assert len(records) == 1

    devices = ["cpu"] + (["auto"] if _surely_cpu("auto") else [])
    for device in devices:
        got = embed_in_a_new_process(model_dir, cache, audio, device)
        assert got["loaded"] == [] and got["runtime"] == "onnx", device
        assert np.allclose(got["vector"], want, atol=1e-6), device
    copy = tmp_path / "moved-model"
    shutil.copytree(model_dir, copy)
    assert embed_in_a_new_process(copy, cache, audio)["loaded"] == []

    # Other weights saved into the copy: another model, loaded and exported.
    tiny_model.build_tiny_model(str(copy), layers=3, hidden=64, seed=11)
    other = embed_in_a_new_process(copy, cache, audio)
    assert other["loaded"] == ["torch", "transformers"] and other["runtime"] == "onnx"
    assert not np.allclose(other["vector"], want, atol=1e-3)

    # A record whose export is gone: the model is loaded and exported again.
    (cache / json.loads(records[0].read_text())["onnx"]).unlink()
    again = embed_in_a_new_process(model_dir, cache, audio)
    assert again["loaded"] == ["torch", "transformers"]
    assert np.allclose(again["vector"], want, atol=1e-5)


def test_the_cpu_is_known_without_torch_only_where_it_is_certain(tmp_path, monkeypatch):
    from beetsplug.soundslike import embedder

    gpu = tmp_path / "nvidia0"
    gpu.write_text("")
    from types import SimpleNamespace

    monkeypatch.setattr(embedder, "sys", SimpleNamespace(platform="linux"))  # this module's view only
    assert embedder._surely_cpu("cpu") and not embedder._surely_cpu("cuda")
    assert not embedder._surely_cpu("mps")
    for build, files, certain in (("2.13.0+cpu", (str(gpu),), True),
                                  ("2.13.0", (str(gpu),), False),
                                  ("2.13.0+cu126", (str(gpu),), False),
                                  ("2.13.0+cu126", (str(tmp_path / "none"),), True)):
        monkeypatch.setattr(embedder, "_torch_build", lambda: build)
        monkeypatch.setattr(embedder, "GPU_DEVICE_FILES", files)
        assert embedder._surely_cpu("auto") is certain, (build, files)


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_a_damaged_cached_export_is_made_again(model_dir, tmp_path, plugin_log, damage):
    """An export damaged on disk would have sent every later run to torch
    (three times slower) with a warning each time: it is exported again."""
    spec, cache = ModelSpec(model_dir, 2, "mean"), tmp_path / "onnx"
    audio = tracks(1)[0]
    first = Embedder(spec, device="cpu", runtime="onnx", cache_dir=cache)
    want = first.embed(audio)
    data = first.onnx.path.read_bytes()
    first.onnx.path.write_bytes(data[: len(data) // 3] if damage == "truncated" else b"")
    again = Embedder(spec, device="cpu", runtime="onnx", cache_dir=cache)
    assert again.runtime == "onnx" and again.onnx.path == first.onnx.path
    assert any("damaged: preparing it again" in line for line in plugin_log)
    assert not any("using torch" in line for line in plugin_log)
    assert np.allclose(again.embed(audio), want, atol=1e-5)


def test_an_export_leaves_the_root_logger_unconfigured(model_dir, tmp_path, monkeypatch):
    """onnxruntime's quantiser logs through ``logging.warning``, which
    configures a root logger without handlers: beets' lines were then
    printed twice for the rest of the command."""
    import logging

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # as in a beet process
    Embedder(ModelSpec(model_dir, 2, "mean"), device="cpu", runtime="onnx",
             cache_dir=tmp_path / "onnx")
    assert root.handlers == []


def test_failed_export_falls_back_to_torch_with_one_line(model_dir, tmp_path, plugin_log):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    spec = ModelSpec(model_dir, 2, "mean")
    fallback = Embedder(spec, device="cpu", runtime="onnx", cache_dir=blocker)
    assert fallback.runtime == "torch" and fallback.onnx is None
    lines = [line for line in plugin_log if "using torch" in line]
    assert len(lines) == 1 and "\n" not in lines[0]
    reference = Embedder(spec, device="cpu")
    audio = tracks(2)
    for a, b in zip(reference.embed_many(audio), fallback.embed_many(audio)):
        assert np.allclose(a, b, atol=1e-6)


def test_importing_the_runtime_imports_nothing_heavy():
    probe = ("import sys, beetsplug.soundslike.embedder, beetsplug.soundslike.runtime; "
             "print(sorted(m for m in ('torch', 'onnxruntime', 'onnx', 'transformers') "
             "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_runtime_option_through_beet_embed(beets_env, audio_dir, tmp_path):
    beets_env.reconfigure(auto=False, runtime="torch")
    beets_env.import_dir(copy_pieces(audio_dir, tmp_path / "in", PIECES))
    collection = beets_env.settings.spec.collection
    ids = [item.id for item in beets_env.lib.items()]
    cache = beets_env.settings.store_dir / "onnx"

    beets_env.beet("embed")
    with beets_env.store() as store:
        reference = store.vectors(collection, ids)
    assert len(reference) == len(PIECES) and not cache.exists()

    for runtime in ("onnx", "auto"):
        beets_env.reconfigure(runtime=runtime)
        beets_env.beet("embed", "--force")
        with beets_env.store() as store:
            vectors = store.vectors(collection, ids)
        assert set(vectors) == set(reference)
        for item_id, vector in vectors.items():
            assert float(np.dot(vector, reference[item_id])) >= 0.995
        assert len(list(cache.glob("*.onnx"))) == 1  # auto reuses onnx's export


def test_runtime_option_is_checked(beets_env):
    beets_env.reconfigure(runtime="tensorflow")
    message = user_error(beets_env, "embed")
    assert "soundslike.runtime" in message and "auto" in message


@pytest.mark.parametrize("stable", [False, True])
def test_int8_export_is_as_precise_on_quiet_passages(tmp_path, stable):
    """The first convolution (over raw audio) stays float, and every window
    of the other convolutions is scaled to one range before its int8
    product: frames 60 dB below the excerpt's peak come out about as
    precise as loud ones, with group norm (like wav2vec2-base) and layer
    norm (like large) alike. With one int8 scale per tensor and no row
    scaling their error was 4 times the loud frames' (0.22, layer norm)."""
    import onnx
    import torch
    from transformers import AutoModel

    from beetsplug.soundslike.runtime import FLOAT_PRODUCT_INPUTS, FORMAT, prepare

    folder = tiny_model.build_tiny_model(str(tmp_path / "model"), layers=1, hidden=64,
                                         stable_layer_norm=stable)
    model = AutoModel.from_pretrained(folder).eval()

    def features(module, audio):
        return module.feature_extractor(audio).transpose(1, 2)

    encoder = prepare(model, features, ModelSpec(folder, 1, "mean"), tmp_path / "onnx")
    assert f"_f{FORMAT}_" in encoder.path.name  # a new recipe is a new export

    graph = onnx.load(str(encoder.path)).graph
    rows = {tensor.name: tensor.dims[0] for tensor in graph.initializer if tensor.dims}
    floats = [node for node in graph.node if node.op_type == "MatMul"]
    assert len(floats) == 1 and rows[floats[0].input[1]] <= FLOAT_PRODUCT_INPUTS
    assert any(node.op_type == "MatMulInteger" for node in graph.node)
    assert any(node.op_type == "ReduceMax" for node in graph.node)  # the row scales

    audio = gen_audio.piece(3, 4.0, rate=16000).astype(np.float32)
    audio /= audio.std()
    half = len(audio) // 2
    audio[half:] *= 10 ** (-60 / 20)
    with torch.no_grad():
        reference = features(model, torch.from_numpy(audio[None])).numpy()[0]
    frames = encoder(audio[None])[0]
    error = np.linalg.norm(frames - reference, axis=1) / np.linalg.norm(reference, axis=1)
    loud, quiet = error[:len(error) // 2 - 2], error[len(error) // 2 + 2:]
    assert loud.max() < 0.1 and quiet.max() < 0.1


@pytest.mark.parametrize("stable", [False, True])
def test_windowed_encoder_computes_the_convolutions_with_their_biases(stable):
    """The feature encoder as products over windows (what the export
    quantises) gives the original's output, also for convolutions with a
    bias (wav2vec2-large's): the first one takes it as a column of ones in
    its one float product, the others add it after theirs."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from beetsplug.soundslike.runtime import windowed_encoder

    torch.manual_seed(0)
    config = Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16,) * 7, conv_bias=True, do_stable_layer_norm=stable,
        feat_extract_norm="layer" if stable else "group",
    )
    original = Wav2Vec2Model(config).eval().feature_extractor
    with torch.no_grad():
        for name, parameter in original.named_parameters():
            if name.endswith("bias"):
                parameter.normal_()  # biases are zero when a model is built
        windowed = windowed_encoder(original)
        first = windowed.convs[0]
        assert first.fold_bias and first.linear.bias is None
        assert first.linear.weight.shape[1] == 10 + 1  # 10 samples and the bias
        assert all(conv.linear.bias is not None for conv in windowed.convs[1:])
        audio = torch.from_numpy(gen_audio.piece(1, 1.0, rate=16000).astype(np.float32))[None]
        expected = original(audio)
        found = windowed(audio)
    assert found.shape == expected.shape
    assert torch.allclose(found, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kernel, groups, bias", [(128, 16, True), (16, 4, False), (5, 1, True)])
def test_positional_convolution_through_dfts_is_the_convolution(kernel, groups, bias):
    """The export computes the positional convolution (wav2vec2: 128 taps,
    16 groups, weight-normed) blockwise through DFTs: the same output as
    the convolution to float rounding, for any length, a block or less,
    several blocks or not a whole number of them, and any kernel."""
    import torch

    from beetsplug.soundslike.runtime import spectral_conv

    torch.manual_seed(kernel)
    conv = torch.nn.Conv1d(64, 64, kernel, padding=kernel // 2, groups=groups, bias=bias)
    if kernel == 128:
        conv = torch.nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
    spectral = spectral_conv(conv)
    assert spectral is not None
    assert spectral_conv(torch.nn.Conv1d(8, 8, 3, padding=0)) is None  # not padded by half
    with torch.no_grad():
        for frames in (1, kernel - 1, kernel, 3 * kernel, 3 * kernel + 7, 499):
            x = torch.randn(2, 64, frames)
            expected, found = conv(x), spectral(x)
            assert found.shape == expected.shape, frames
            error = float((found - expected).norm() / expected.norm())
            assert error < 1e-5, (frames, error)
