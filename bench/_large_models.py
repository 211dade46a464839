"""Bench-scale transformers: BERT-base (110 M parameters) and a ~1 B-parameter LLaMA-style
decoder (TinyLlama's shape: hidden 2048, 22 layers, 32 heads, 4 KV heads, SwiGLU 5632), random
weights, exported once with the legacy exporter and cached beside the model zoo. The 1 B model
is over protobuf's 2 GB limit, so its weights live in one external data file."""
from __future__ import annotations

import os
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models import transformer_zoo as tz  # noqa: E402
from models.zoo import default_cache_dir  # noqa: E402

LARGE = ("bert_base", "llama_1b")


def _build(name: str):
    import torch

    tf = tz._import_transformers()
    torch.manual_seed(0)
    if name == "bert_base":
        model = tf.BertModel(tf.BertConfig(), add_pooling_layer=False)  # bert-base-uncased shape
    elif name == "llama_1b":
        cfg = tf.LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                             num_attention_heads=32, num_key_value_heads=4, vocab_size=32000,
                             max_position_embeddings=2048, use_cache=False)
        model = tf.LlamaModel(cfg)
    else:
        raise ValueError(name)
    tz._break_ties(model)
    return model.eval()


def large_model(name: str) -> pathlib.Path:
    """Path of the cached export (building it on first use: minutes, several GB of RAM)."""
    import onnx

    path = default_cache_dir() / f"{name}.legacy.onnx"
    if path.exists():
        return path
    import torch

    torch.set_num_threads(2)
    start = time.time()
    model = _build(name)
    names = ("input_ids", "attention_mask")
    ids = torch.randint(0, 1000, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.int64)
    path.parent.mkdir(parents=True, exist_ok=True)  # a fresh machine has no cache yet
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        raw = os.path.join(tmp, "raw.onnx")
        with torch.no_grad():
            torch.onnx.export(tz._wrapper(model, names), (ids, mask), raw, dynamo=False,
                              opset_version=17, input_names=list(names),
                              output_names=["last_hidden_state"],
                              dynamic_axes={n: {0: "batch", 1: "seq"} for n in names} |
                              {"last_hidden_state": {0: "batch", 1: "seq"}})
        del model
        proto = onnx.load(raw)  # gathers torch's per-tensor files
        final = os.path.join(tmp, path.name)
        onnx.save_model(proto, final, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
        del proto
        os.replace(final, path.with_suffix(".onnx.partial"))
        os.replace(os.path.join(tmp, path.name + ".data"), path.parent / (path.name + ".data"))
        os.replace(path.with_suffix(".onnx.partial"), path)
    print(f"built {path} in {time.time() - start:.0f} s", file=sys.stderr)
    return path


if __name__ == "__main__":
    for n in sys.argv[1:] or LARGE:
        print(large_model(n))
