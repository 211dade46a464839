"""Command line: `graphprune MODEL --ratio 0.4 -o OUT` and `graphprune inspect MODEL`.

User mistakes (bad file, bad option, nothing prunable) print one `error:` line and exit
non-zero; exit codes are documented in the README and come from `errors.py`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import traceback
from pathlib import Path

import click

from . import __version__
from .api import DEFAULT_ROUND_TO, analyze_model, prune, sensitivity, write
from .budget import Budget
from .sensitivity import Sensitivity
from .errors import INTERNAL_ERROR_EXIT, GraphpruneError, UsageError
from .io import write_text
from .policy import Plan, parse_round_to
from .scoring import CRITERIA, DATA_CRITERIA
from .sparsity import CRITERIA as SPARSE_CRITERIA
from .sparsity import (DEFAULT_MIN_SPEEDUP, DEFAULT_PATTERN, DEFAULT_SEQUENCE, PATTERNS, Pattern,
                       SparsifyConfig)


class _DefaultToPrune(click.Group):
    """`graphprune model.onnx ...` means `graphprune prune model.onnx ...`."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h",
                                                                     "--version"):
            args = ["prune", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_DefaultToPrune, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="graphprune")
def main():
    """Structural pruning of ONNX models: graphprune MODEL --ratio 0.4 -o OUT."""


def _progress(quiet: bool, verbose: bool):
    if quiet or not (verbose or sys.stderr.isatty()):
        return None
    return lambda msg: click.echo(f"... {msg}", err=True)


def _run(fn):
    """Turn graphprune's user-facing errors into one line and an exit code."""
    try:
        return fn()
    except GraphpruneError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted; nothing was written", err=True)
        sys.exit(130)
    except Exception as err:  # a graphprune bug: say so in one line; the traceback on request
        if os.environ.get("GRAPHPRUNE_DEBUG"):
            raise
        where = traceback.extract_tb(err.__traceback__)[-1]
        click.echo(f"error: internal error ({type(err).__name__}: {str(err)[:200]} at "
                   f"{Path(where.filename).name}:{where.lineno}); nothing was written and the "
                   "input is untouched. Please report it with the model if you can; "
                   "GRAPHPRUNE_DEBUG=1 shows the traceback", err=True)
        sys.exit(INTERNAL_ERROR_EXIT)


def _sparse_options(fn):
    """The --sparsity options, shared by `prune` and `export`."""
    options = [
        click.option(
            "--sparsity", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
            help="Then zero this fraction of the remaining MatMul/Gemm/Conv weights and run "
            "the nodes where it is measured faster on graphprune's sparse operators (the "
            "model then needs graphprune.kernels to run)."),
        click.option(
            "--pattern", help=f"Sparsity pattern of the [in, out] weight: "
            f"{', '.join(PATTERNS)} [default: {DEFAULT_PATTERN}]. RxC blocks: R inputs x C "
            f"outputs; N:M keeps N of every M inputs (its own sparsity)."),
        click.option(
            "--sparse-batch", type=click.IntRange(min=1), default=1, show_default=True,
            help="Batch size the sparse-vs-dense timings use (set it to your serving batch)."),
        click.option(
            "--sparse-dim", multiple=True, metavar="NAME=VALUE",
            help="Value of a named dynamic input dim for the timings (e.g. sequence=128); "
            f"other non-batch dynamic dims use {DEFAULT_SEQUENCE}."),
        click.option(
            "--sparse-min-speedup", type=click.FloatRange(0.0), default=DEFAULT_MIN_SPEEDUP,
            show_default=True, help="A node moves to a sparse op only when measured at least "
            "this much faster than the dense op."),
        click.option(
            "--sparse-all", is_flag=True,
            help="Move every eligible node to the sparse ops without timing them."),
        click.option(
            "--sparse-criterion", type=click.Choice(SPARSE_CRITERIA), default="magnitude",
            show_default=True, help="Which weights --sparsity zeroes: the smallest |W| "
            "(blocks: L2 norm), or the smallest |W|·‖X‖ over --calib data (activation, "
            "Wanda-style)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


class _RoundTo(click.ParamType):
    """--round-to: 'auto' or a positive integer."""

    name = "auto|N"

    def convert(self, value, param, ctx):
        try:
            return parse_round_to(value)
        except UsageError as err:
            self.fail(str(err).removeprefix("--round-to "), param, ctx)


_ROUND_TO = _RoundTo()


@main.command("prune")
@click.argument("model", type=click.Path(dir_okay=True, path_type=Path))
@click.option("-r", "--ratio", type=click.FloatRange(0.0, 1.0, max_open=True),
              help="Fraction of channels removed from every prunable group "
              "[default: 0.4; 0 with --sparsity].")
@click.option("--head-ratio", type=click.FloatRange(0.0, 1.0, max_open=True),
              help="Fraction of attention heads removed [default: --ratio].")
@click.option("--prune-hidden", is_flag=True,
              help="Also prune channels a LayerNorm/RMSNorm normalises (a transformer's "
              "hidden size). Approximate: the norm's statistics change; measure the result.")
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Where to write the pruned model [default: MODEL.pruned.onnx].")
@click.option("--criterion", type=click.Choice(sorted(CRITERIA)), default="l2",
              show_default=True, help="Channel importance: L1/L2 magnitude over the whole "
              "group, folded BatchNorm |gamma|, random (a baseline), lamp, fpgm (filter "
              "redundancy), obs (second-order; uses --calib if given) or activation "
              "(|W|·‖X‖, needs --calib).")
@click.option("--calib", "calib_path", type=click.Path(path_type=Path),
              help="Calibration data: a folder (or file) of .npy/.npz arrays keyed by input "
              "name, or of .jpg/.png images; feeds data-aware criteria and --compensate.")
@click.option("--calib-preprocess", type=click.Choice(["imagenet", "unit", "raw"]),
              default="imagenet", show_default=True,
              help="How --calib images become NCHW float32: ImageNet mean/std, [0, 1], or "
              "raw 0-255 (after resizing and centre-cropping to the input size).")
@click.option("--compensate/--no-compensate", default=False, show_default=True,
              help="Fold the removed channels' mean contribution into the next layer's bias "
              "and, with --calib, re-fit its weights by least squares.")
@click.option("--round-to", type=_ROUND_TO, default=DEFAULT_ROUND_TO,
              show_default=True, help="Kept channel counts are multiples of this (where a "
              "group is larger); 'auto' rounds to what ONNX Runtime's CPU conv kernels need "
              "on this machine (blocks of 16 channels with AVX-512, 8 with AVX2).")
@click.option("--exclude", multiple=True, metavar="NAME",
              help="Node, tensor or weight name whose channels must not be pruned; "
              "repeat or separate with commas.")
@click.option("--global", "global_rank", is_flag=True,
              help="Rank channels of all groups together: --ratio is then the fraction of "
              "all prunable channels, taken where they matter least.")
@click.option("--target-flops", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
              help="Prune (globally) until MACs are at most this fraction of the original.")
@click.option("--target-params", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
              help="Prune (globally) until parameters are at most this fraction.")
@click.option("--max-group-ratio", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.8,
              show_default=True, help="With a global budget: most any one group may lose.")
@click.option("--sensitivity", "sensitivity_path", type=click.Path(path_type=Path),
              help="Spread a --target-flops/--target-params/--global budget by the curves of "
              "`graphprune sensitivity` instead of by channel scores.")
@click.option("--save-plan", type=click.Path(path_type=Path), help="Write the plan as JSON.")
@click.option("--plan", "plan_path", type=click.Path(path_type=Path),
              help="Replay a plan saved with --save-plan instead of scoring.")
@click.option("--report", "report_path", type=click.Path(path_type=Path),
              help="Write the report: a self-contained HTML page when the path ends in "
              ".html, JSON otherwise.")
@_sparse_options
@click.option("--no-verify", is_flag=True, help="Skip running both models in ONNX Runtime.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed for the random criterion and the verification inputs.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("-v", "--verbose", is_flag=True, help="Print progress even when not on a terminal.")
def prune_command(model, ratio, head_ratio, prune_hidden, output, criterion, calib_path, calib_preprocess,
                  compensate, round_to, exclude, global_rank,
                  target_flops, target_params, max_group_ratio, sensitivity_path, save_plan,
                  plan_path, report_path, sparsity, pattern, sparse_batch, sparse_dim,
                  sparse_min_speedup, sparse_all, sparse_criterion, no_verify, seed, quiet,
                  verbose):
    """Prune MODEL and write the slimmed model."""
    def go():
        excluded = tuple(n.strip() for item in exclude for n in item.split(",") if n.strip())
        sparse = _sparse_config(sparsity, pattern, sparse_batch, sparse_dim,
                                sparse_min_speedup, sparse_all, excluded, sparse_criterion)
        if sparse is not None and sparse.criterion == "activation" and calib_path is None:
            raise UsageError("--sparse-criterion activation needs calibration data: pass "
                             "--calib PATH (a folder of .npy/.npz arrays or images)")
        nonlocal ratio
        if ratio is None:
            ratio = 0.0 if sparse is not None else 0.4
        plan = None
        if plan_path is not None:
            if not plan_path.is_file():
                raise UsageError(f"--plan {plan_path}: no such file")
            plan = Plan.from_json(plan_path.read_text(), str(plan_path))
        budget = _budget(ratio, global_rank, target_flops, target_params, max_group_ratio)
        if sensitivity_path is not None:
            if budget is None:
                raise UsageError("--sensitivity needs a model-wide target: --target-flops, "
                                 "--target-params or --global")
            if not sensitivity_path.is_file():
                raise UsageError(f"--sensitivity {sensitivity_path}: no such file")
            curves = Sensitivity.from_json(sensitivity_path.read_text(), str(sensitivity_path))
            budget = dataclasses.replace(budget, sensitivity=curves)
        out = output or model.with_name(model.stem + ".pruned.onnx")
        if out.exists() and model.exists() and out.resolve() == model.resolve():
            raise UsageError(f"-o {out}: refusing to overwrite the input model")
        calib = None
        if calib_path is not None:
            from .calibration import CalibrationSet

            calib = CalibrationSet(calib_path, preprocess=calib_preprocess)
        elif criterion in DATA_CRITERIA and plan is None:
            raise UsageError(f"--criterion {criterion} needs calibration data: pass --calib "
                             f"PATH (a folder of .npy/.npz arrays or images)")
        result = prune(model, ratio=ratio, criterion=criterion, round_to=round_to,
                       exclude=excluded, plan=plan, verify=not no_verify, seed=seed,
                       head_ratio=head_ratio, budget=budget, prune_hidden=prune_hidden,
                       progress=_progress(quiet, verbose), calib=calib,
                       compensate=compensate, sparse=sparse)
        write(result, out, source=model)
        if save_plan is not None:
            write_text(save_plan, result.plan.to_json())
        if report_path is not None:
            if report_path.suffix.lower() in (".html", ".htm"):
                from .htmlreport import render

                write_text(report_path, render(result.report, result.plan))
            else:
                write_text(report_path, json.dumps(result.report.to_dict(), indent=1,
                                                    default=str))
        if not quiet:
            click.echo(result.report.summary())
            click.echo(f"wrote {out}")

    _run(go)


@main.command("inspect")
@click.argument("model", type=click.Path(dir_okay=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect_command(model, as_json):
    """List the channel groups of MODEL: size, members, and why frozen ones are frozen."""
    def go():
        graph, analysis = analyze_model(model)
        rows = [{"group": g.key, "channels": g.units or max(g.sizes.values(), default=0), "members": len(g.spaces),
                 "prunable": g.prunable, "frozen": g.frozen, "nodes": g.nodes}
                for g in analysis.groups]
        if as_json:
            click.echo(json.dumps(rows, indent=1))
            return
        click.echo(f"{'group':48s} {'units':>6s} {'members':>7s}  status")
        for r in rows:
            status = "prunable" if r["prunable"] else f"frozen: {r['frozen']}"
            click.echo(f"{r['group'][:48]:48s} {r['channels']:>6d} {r['members']:>7d}  {status}")
        n = sum(r["prunable"] for r in rows)
        click.echo(f"{len(rows)} groups, {n} prunable, {len(rows) - n} frozen")

    _run(go)


@main.command("sensitivity")
@click.argument("model", type=click.Path(dir_okay=True, path_type=Path))
@click.option("--ratios", default="0.1,0.2,0.3,0.5", show_default=True,
              help="Comma-separated ratios to try on each group.")
@click.option("--criterion", type=click.Choice(sorted(CRITERIA)), default="l2",
              show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Write the curves as JSON (for `graphprune MODEL --sensitivity FILE`).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-q", "--quiet", is_flag=True)
@click.option("-v", "--verbose", is_flag=True)
def sensitivity_command(model, ratios, criterion, output, seed, quiet, verbose):
    """Measure each group's output error when pruned alone at several ratios."""
    def go():
        try:
            values = tuple(float(r) for r in ratios.split(",") if r.strip())
        except ValueError:
            raise UsageError(f"--ratios {ratios!r}: expected numbers like 0.1,0.2,0.5") from None
        sens = sensitivity(model, values, criterion=criterion, seed=seed,
                           progress=_progress(quiet, verbose))
        if output is not None:
            write_text(output, sens.to_json())
        if not quiet:
            click.echo(f"{'group':48s} " + " ".join(f"{r:>7.2f}" for r in sens.ratios))
            for key, errs in sorted(sens.errors.items(), key=lambda kv: -kv[1][-1]):
                click.echo(f"{key[:48]:48s} " + " ".join(f"{e:7.4f}" for e in errs))
            click.echo("relative output error (L2 of difference / L2 of output) per ratio")

    _run(go)


@main.command("export")
@click.argument("model", type=click.Path(dir_okay=True, path_type=Path))
@click.option("--target", type=click.Choice(["cpu", "edge"]), default="cpu", show_default=True,
              help="cpu: fp32 .onnx. edge: also the ORT format, and fp16 where it stays "
              "within --fp16-tolerance.")
@click.option("--fp16/--no-fp16", default=None,
              help="Try fp16 weights and compute (kept only within --fp16-tolerance) "
              "[default: with --target edge].")
@click.option("--fp16-tolerance", type=click.FloatRange(0.0, min_open=True),
              default=1e-2, show_default=True,
              help="Largest relative output error (max |fp16 - fp32| / max |fp32|) for which "
              "fp16 is kept.")
@click.option("--opset", type=click.IntRange(min=1), help="Convert to this ONNX opset.")
@click.option("--ort-format/--no-ort-format", default=None,
              help="Also write ONNX Runtime's .ort format and its required-operators config "
              "[default: with --target edge].")
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Output folder [default: MODEL-TARGET beside the model].")
@click.option("--force", is_flag=True, help="Replace an existing non-empty output folder.")
@click.option("--no-prune", is_flag=True, help="Export the model as it is, without pruning.")
@click.option("-r", "--ratio", type=click.FloatRange(0.0, 1.0, max_open=True),
              help="Fraction of channels removed from every prunable group [default: 0.4].")
@click.option("--head-ratio", type=click.FloatRange(0.0, 1.0, max_open=True),
              help="Fraction of attention heads removed [default: --ratio].")
@click.option("--round-to", type=_ROUND_TO,
              help=f"Kept channel counts are multiples of this, or 'auto' "
              f"[default: {DEFAULT_ROUND_TO}].")
@click.option("--criterion", type=click.Choice(sorted(set(CRITERIA) - set(DATA_CRITERIA))),
              help="Channel importance [default: l2].")
@click.option("--exclude", multiple=True, metavar="NAME",
              help="Node, tensor or weight whose channels must not be pruned.")
@click.option("--prune-hidden", is_flag=True, default=None,
              help="Also prune a transformer's hidden size (approximate).")
@click.option("--plan", "plan_path", type=click.Path(path_type=Path),
              help="Replay a plan saved with --save-plan instead of scoring.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed for the criterion and the random check inputs.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("-v", "--verbose", is_flag=True, help="Print progress even when not on a terminal.")
@_sparse_options
def export_command(model, target, fp16, fp16_tolerance, opset, ort_format, output, force,
                   no_prune, ratio, head_ratio, round_to, criterion, exclude, prune_hidden,
                   plan_path, seed, quiet, verbose, sparsity, pattern, sparse_batch, sparse_dim,
                   sparse_min_speedup, sparse_all, sparse_criterion):
    """Prune MODEL and write a deployment folder: model, manifest.json, README.txt."""
    from .export import export

    def go():
        options = {}
        for key, value in (("ratio", ratio), ("head_ratio", head_ratio),
                           ("round_to", round_to), ("criterion", criterion),
                           ("prune_hidden", prune_hidden)):
            if value is not None:
                options[key] = value
        excluded = tuple(n.strip() for item in exclude for n in item.split(",") if n.strip())
        if excluded:
            options["exclude"] = excluded
        sparse = _sparse_config(sparsity, pattern, sparse_batch, sparse_dim,
                                sparse_min_speedup, sparse_all, excluded, sparse_criterion)
        if sparse is not None:
            options["sparse"] = sparse
            options.setdefault("ratio", 0.0)
        if plan_path is not None:
            if not plan_path.is_file():
                raise UsageError(f"--plan {plan_path}: no such file")
            options["plan"] = Plan.from_json(plan_path.read_text(), str(plan_path))
        out = output or model.with_name(f"{model.stem}-{target}")
        result = export(model, out, target=target, fp16=fp16, opset=opset,
                        ort_format=ort_format, force=force, prune_options=options,
                        no_prune=no_prune, fp16_tolerance=fp16_tolerance, seed=seed,
                        progress=_progress(quiet, verbose))
        if not quiet:
            click.echo(result.summary())

    _run(go)


def _sparse_config(sparsity, pattern, batch, dims, min_speedup, sparse_all, excluded,
                   criterion="magnitude"):
    """The --sparsity options as a SparsifyConfig, or None when --sparsity is absent."""
    if sparsity is None:
        if pattern is not None:
            raise UsageError("--pattern needs --sparsity (e.g. --sparsity 0.9 --pattern 4x1)")
        return None
    values = {}
    for item in dims:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip().isdigit() or int(value) < 1:
            raise UsageError(f"--sparse-dim {item!r}: expected NAME=VALUE with a positive "
                             f"integer, e.g. sequence=128")
        values[name.strip()] = int(value)
    config = SparsifyConfig(sparsity=sparsity, pattern=pattern or DEFAULT_PATTERN, batch=batch,
                            dims=values, min_speedup=min_speedup, measure=not sparse_all,
                            exclude=excluded, criterion=criterion)
    Pattern.parse(config.pattern)  # a bad pattern fails before any work
    return config


def _budget(ratio, global_rank, target_flops, target_params, max_group_ratio):
    if target_flops is not None and target_params is not None:
        raise UsageError("--target-flops and --target-params exclude each other; choose one")
    if target_flops is not None:
        return Budget("macs", target_flops, max_group_ratio)
    if target_params is not None:
        return Budget("params", target_params, max_group_ratio)
    if global_rank:
        return Budget("channels", 1.0 - ratio, max_group_ratio)
    return None


if __name__ == "__main__":
    main()
