"""What the generated code for unstructured weights (kernels/src/jit.cpp) costs when a session is
created: time and resident memory, with the code on and off (GRAPHPRUNE_KERNELS_JIT=0).

The model is the one bench/sparse_e2e.py times: `graphprune.prune(model, ratio=0, sparse=...)`
at --sparsity with the unstructured pattern (nodes the cost model keeps dense stay dense). Each
measurement is a fresh process that loads the library, then creates one InferenceSession (2
intra-op threads): the seconds that takes and how much its resident set grew. --rounds times each
setting in turn; the lowest of each is kept.

    python bench/jit_cost.py                          # BERT-base and ResNet-50 at 90 %
    python bench/jit_cost.py --models bert_base --sparsity 0.8

Results: bench/results/jit_cost.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _child(path: str) -> None:
    from graphprune import kernels as gk

    gk.library_path()

    def rss_mb() -> float:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS in /proc/self/status")

    before, t0 = rss_mb(), time.perf_counter()
    sess = gk.session(path, threads=2)
    seconds = time.perf_counter() - t0
    print(json.dumps({"create_s": seconds, "rss_mb": rss_mb() - before}))
    del sess


def _measure(path: Path, jit: bool) -> dict:
    env = dict(os.environ, GRAPHPRUNE_KERNELS_JIT="1" if jit else "0")
    proc = subprocess.run([sys.executable, __file__, "--child", str(path)], env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"session creation failed for {path}:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="bert_base,resnet50")
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--batch", type=int, default=16, help="the batch the cost model decides for")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child)
        return 0
    import graphprune
    from bench._common import write_results
    from bench.sparse_e2e import model_path
    from graphprune.sparsity import SparsifyConfig

    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name in args.models.split(","):
            result = graphprune.prune(str(model_path(name)), ratio=0.0, verify=False,
                                      sparse=SparsifyConfig(sparsity=args.sparsity,
                                                            pattern="unstructured",
                                                            batch=args.batch, threads=2))
            path = graphprune.write(result, Path(d) / f"{name}.onnx")
            best = {True: None, False: None}
            for _ in range(args.rounds):
                for jit in (False, True):
                    m = _measure(Path(path), jit)
                    b = best[jit]
                    best[jit] = m if b is None else {k: min(b[k], m[k]) for k in m}
            row = {"model": name, "sparsity": args.sparsity,
                   "sparse_nodes": len(result.report.sparsity.rewritten),
                   "off": best[False], "on": best[True]}
            rows.append(row)
            print(f"{name}: create {best[False]['create_s']:.2f} -> {best[True]['create_s']:.2f} s, "
                  f"resident +{best[False]['rss_mb']:.0f} -> +{best[True]['rss_mb']:.0f} MB", flush=True)
    lines = ["| model | sparsity | sparse nodes | create s (off -> on) | resident MB (off -> on) |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['sparsity']:.0%} | {r['sparse_nodes']} | "
                     f"{r['off']['create_s']:.2f} -> {r['on']['create_s']:.2f} | "
                     f"{r['off']['rss_mb']:.0f} -> {r['on']['rss_mb']:.0f} |")
    write_results("jit_cost", rows, "\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
