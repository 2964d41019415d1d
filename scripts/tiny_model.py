#!/usr/bin/env python3
"""Build a small Wav2Vec2 (real architecture, random weights) in a folder.

No model weights can be downloaded in the offline demo or in CI, so both
build this stand-in and load it through the plugin's ordinary
``from_pretrained`` path, exactly as a user's checkpoint is loaded.

Usage: python scripts/tiny_model.py OUT_DIR [--stable-layer-norm] [--layers N]
"""

from __future__ import annotations

import argparse
import os


def build_tiny_model(
    out_dir: str,
    layers: int = 4,
    hidden: int = 64,
    stable_layer_norm: bool = False,
    seed: int = 0,
) -> str:
    """Save a randomly initialised Wav2Vec2Model and its feature extractor
    to ``out_dir``; return the folder."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(seed)
    config = Wav2Vec2Config(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=hidden * 2,
        conv_dim=(32,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        do_stable_layer_norm=stable_layer_norm,
        feat_extract_norm="layer" if stable_layer_norm else "group",
    )
    model = Wav2Vec2Model(config)
    model.save_pretrained(out_dir)
    Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0,
        do_normalize=True, return_attention_mask=stable_layer_norm,
    ).save_pretrained(out_dir)
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--stable-layer-norm", action="store_true")
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    build_tiny_model(args.out_dir, args.layers, args.hidden, args.stable_layer_norm)
    print(args.out_dir)


if __name__ == "__main__":
    main()
