"""The pruning report as one self-contained HTML page: `graphprune MODEL --report out.html`.

No scripts and no external resources: inline CSS, and SVG charts drawn here. The page shows
the summary (parameters and MACs before → after, output fidelity), kept vs removed units of
every pruned group (which ones, too), frozen groups with their reasons, any latency/FLOPs
figures the report carries, graphprune's own time per stage, and the plan.

    from graphprune.htmlreport import render
    html = render(result.report, result.plan)
"""
from __future__ import annotations

import dataclasses
import json
import re
from html import escape

_CSS = """
:root { --kept: #2a9d8f; --removed: #e76f51; --before: #b8c0cc; --after: #264653;
        --ink: #1d2733; --muted: #5c6b7a; --line: #dde3ea; --bg: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
       font: 14px/1.45 -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif; }
main { max-width: 1140px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 32px 0 10px; padding-bottom: 4px;
     border-bottom: 2px solid var(--line); }
.meta { color: var(--muted); margin: 0 0 18px; word-break: break-all; }
.cards { display: grid; grid-template-columns: repeat(4, 1fr); gap: 12px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; }
.card .label { color: var(--muted); font-size: 12px; text-transform: uppercase;
               letter-spacing: .04em; }
.card .big { font-size: 22px; font-weight: 600; margin: 2px 0; }
.card .sub { color: var(--muted); font-size: 13px; }
.good { color: #1b7f5a; } .warn { color: #b5651d; } .bad { color: #b3261e; }
.panel { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; }
svg { display: block; max-width: 100%; }
svg text { font-family: inherit; fill: var(--ink); }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line);
         vertical-align: top; }
th { background: #eef2f6; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
code, pre { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12px; }
pre { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 10px;
      overflow: auto; max-height: 480px; }
details { margin: 8px 0; } summary { cursor: pointer; color: var(--after); }
.legend span { display: inline-block; margin-right: 16px; color: var(--muted); }
.sw { display: inline-block; width: 12px; height: 12px; border-radius: 2px;
      vertical-align: -1px; margin-right: 5px; }
.note { color: var(--muted); font-size: 13px; }
footer { margin-top: 36px; color: var(--muted); font-size: 12px; }
"""


def render(report, plan=None) -> str:
    """One HTML page for a Report (or its to_dict()) and the Plan (or its dict, or None)."""
    r = _as_dict(report)
    p = _as_dict(plan) if plan is not None else None
    groups = list(p.get("groups", [])) if p else []
    source = str(r.get("source", ""))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>graphprune report: {escape(_basename(source))}</title>",
        f"<style>{_CSS}</style></head><body><main>",
        f"<h1>graphprune report: {escape(_basename(source))}</h1>",
        f'<p class="meta">{escape(_meta_line(r, p))}</p>',
        _cards(r, groups),
        _size_section(r),
        _groups_section(groups),
        _frozen_section(r),
        _sparsity_section(r),
        _other_lists(r),
        _timing_section(r),
        _plan_section(p),
        '<footer>Written by graphprune. A self-contained page: no scripts, no external '
        "resources; charts are inline SVG.</footer>",
        "</main></body></html>",
    ]
    return "\n".join(x for x in parts if x) + "\n"


# --- data -------------------------------------------------------------------------------------

def _as_dict(obj) -> dict:
    if obj is None:
        return {}
    if isinstance(obj, dict):
        return obj
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    if hasattr(obj, "to_json"):
        return json.loads(obj.to_json())
    raise TypeError(f"cannot render {type(obj).__name__} in a report")


def _basename(path: str) -> str:
    return re.split(r"[/\\]", path)[-1] or path


def _num(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if v == v else None


def _fmt_int(value) -> str:
    v = _num(value)
    return "–" if v is None else f"{v:,.0f}"


def _short(n: float) -> str:
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}"
    return f"{n:.3g}" if n != int(n) else f"{int(n)}"


def _ratio(before, after) -> float | None:
    b, a = _num(before), _num(after)
    return a / b if b and a is not None else None


def _meta_line(r: dict, p: dict | None) -> str:
    bits = [f"model {r.get('source', '?')}"]
    if r.get("criterion"):
        bits.append(f"criterion {r['criterion']}")
    if p:
        bits.append(f"ratio {p.get('ratio')}")
        bits.append(f"round-to {p.get('round_to')}")
    if r.get("calibration"):
        n = r.get("calibration_samples") or 0
        bits.append(f"calibration {r['calibration']}" + (f" ({n} samples)" if n else ""))
    if r.get("compensation"):
        bits.append(f"compensation: {r['compensation']}")
    return " · ".join(bits)


# --- sections -----------------------------------------------------------------------------------

def _card(label: str, big: str, sub: str = "", cls: str = "") -> str:
    return (f'<div class="card"><div class="label">{escape(label)}</div>'
            f'<div class="big {cls}">{escape(big)}</div><div class="sub">{sub}</div></div>')


def _cards(r: dict, groups: list) -> str:
    cards = []
    for label, key in (("Parameters", "params"), ("MACs", "macs")):
        before, after = r.get(f"{key}_before"), r.get(f"{key}_after")
        ratio = _ratio(before, after)
        big = "–" if ratio is None else f"×{ratio:.3f}"
        sub = f"{_fmt_int(before)} → {_fmt_int(after)}"
        if ratio is not None:
            sub += f" ({(1 - ratio) * 100:.1f}% fewer)"
        cleaned = r.get(f"{key}_cleaned")
        if cleaned and cleaned != before and ratio is not None:
            sub += f"; clean-up alone → {_fmt_int(cleaned)}"
        cards.append(_card(label, big, escape(sub)))
    found, pruned = r.get("groups_found", 0), r.get("groups_pruned", len(groups))
    frozen, skipped = len(r.get("frozen") or []), len(r.get("skipped") or {})
    cards.append(_card("Channel groups", f"{pruned} of {found} pruned",
                       escape(f"{frozen} frozen, {skipped} excluded")))
    fid = r.get("fidelity")
    if isinstance(fid, dict) and fid.get("elements") == 0:
        why = ("the outputs' data-dependent sizes changed" if fid.get("resized") else
               "every output was empty on the random inputs")
        cards.append(_card("Output vs original", "not compared", escape(
            f"{why}: check on real inputs"), "warn"))
    elif isinstance(fid, dict) and fid:
        rel = _num(fid.get("relative_error"))
        cls = "" if rel is None else "good" if rel < 0.05 else "warn" if rel < 0.3 else "bad"
        sub = (f"cosine {fid.get('cosine', 0):.4f}, max abs diff "
               f"{fid.get('max_abs_error', 0):.4g}")
        if fid.get("top1_agreement") is not None:
            sub += f", top-1 agreement {fid['top1_agreement']:.2f}"
        if fid.get("resized"):
            sub += f"; {fid['resized']} data-sized output(s) changed size, not compared"
        cards.append(_card("Output vs original", f"rel. error {rel:.3g}" if rel is not None
                           else "–", escape(sub), cls))
    else:
        cards.append(_card("Output vs original", "not verified", "run without --no-verify "
                           "to measure"))
    note = ""
    if r.get("approximate"):
        note = (f'<p class="note warn">Approximate: {len(r["approximate"])} pruned group(s) '
                "pass through a normalisation over the pruned channels (--prune-hidden); the "
                "output difference above is the price.</p>")
    return f'<section class="cards">{"".join(cards)}</section>{note}'


def _size_section(r: dict) -> str:
    rows = []
    for label, key in (("Parameters", "params"), ("MACs", "macs")):
        if _num(r.get(f"{key}_before")):
            rows.append((label, _num(r[f"{key}_before"]), _num(r.get(f"{key}_after")) or 0.0))
    if _num(r.get("macs_before")) and "flops_before" not in r:
        rows.append(("FLOPs (2 × MACs)", 2 * _num(r["macs_before"]),
                     2 * (_num(r.get("macs_after")) or 0.0)))
    extra = _extra_metrics(r)
    rows += extra
    if not rows:
        return ""
    title = "Size, compute and latency" if any("atency" in x[0] for x in extra) else \
        "Size and compute"
    legend = ('<p class="legend"><span><i class="sw" style="background:var(--before)"></i>'
              'before</span><span><i class="sw" style="background:var(--after)"></i>after'
              "</span></p>")
    return (f"<h2>{title}</h2><div class=\"panel\">{legend}"
            f"{_before_after_svg(rows)}</div>")


_PAIR_NAMES = (("before", "after"), ("original", "pruned"), ("before_ms", "after_ms"),
               ("original_ms", "pruned_ms"))


def _extra_metrics(r: dict) -> list[tuple[str, float, float]]:
    """Latency, FLOPs or other before/after figures the report may carry: `X_before` and
    `X_after` keys, or a dict `X` holding a before/after (original/pruned) pair."""
    rows = []
    for key, value in r.items():
        if key.endswith("_before") and key[:-7] not in ("params", "macs"):
            after = r.get(key[:-7] + "_after")
            if _num(value) is not None and _num(after) is not None:
                rows.append((_label(key[:-7]), _num(value), _num(after)))
        elif isinstance(value, dict):
            for b, a in _PAIR_NAMES:
                if _num(value.get(b)) is not None and _num(value.get(a)) is not None:
                    unit = " (ms)" if b.endswith("_ms") else ""
                    rows.append((_label(key) + unit, _num(value[b]), _num(value[a])))
                    break
    return rows


def _label(key: str) -> str:
    text = key.replace("_", " ").strip()
    text = re.sub(r"\bms\b", "(ms)", text)
    return "FLOPs" if text.lower() == "flops" else text[:1].upper() + text[1:]


def _before_after_svg(rows: list[tuple[str, float, float]]) -> str:
    width, label_w, bar_w, row_h = 1060, 190, 640, 46
    height = row_h * len(rows) + 10
    out = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'role="img" aria-label="before and after">']
    for i, (label, before, after) in enumerate(rows):
        y = 6 + i * row_h
        scale = max(before, after, 1e-30)
        wb, wa = bar_w * before / scale, bar_w * after / scale
        ratio = f"×{after / before:.3f}" if before else ""
        out.append(f'<text x="0" y="{y + 24}" font-size="13" font-weight="600">'
                   f"{escape(label)}</text>")
        out.append(f'<rect x="{label_w}" y="{y}" width="{wb:.1f}" height="16" rx="2" '
                   f'fill="#b8c0cc"><title>before: {before:,.6g}</title></rect>')
        out.append(f'<rect x="{label_w}" y="{y + 19}" width="{wa:.1f}" height="16" rx="2" '
                   f'fill="#264653"><title>after: {after:,.6g}</title></rect>')
        out.append(f'<text x="{label_w + wb + 6:.1f}" y="{y + 13}" font-size="12">'
                   f"{escape(_short(before))}</text>")
        out.append(f'<text x="{label_w + wa + 6:.1f}" y="{y + 32}" font-size="12">'
                   f"{escape(_short(after))} {escape(ratio)}</text>")
    out.append("</svg>")
    return "".join(out)


def _runs(keep: list[int], size: int) -> list[tuple[int, int, bool]]:
    """(start, length, kept) runs over unit ids 0..size-1."""
    kept = set(keep)
    runs: list[tuple[int, int, bool]] = []
    for u in range(size):
        k = u in kept
        if runs and runs[-1][2] == k:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1, k)
        else:
            runs.append((u, 1, k))
    return runs


def _groups_section(groups: list) -> str:
    head = "<h2>Kept units per pruned group</h2>"
    if not groups:
        return head + '<p class="note">No group was pruned.</p>'
    width, label_w, bar_w, row_h = 1060, 270, 540, 30
    height = row_h * len(groups) + 8
    out = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'role="img" aria-label="kept and removed units per group">']
    for i, g in enumerate(groups):
        size = int(g.get("size") or 0)
        keep = [int(k) for k in g.get("keep", [])]
        kept = len(keep)
        y = 4 + i * row_h
        key = str(g.get("key", f"group {i}"))
        shown = key if len(key) <= 40 else "…" + key[-39:]
        members = g.get("members") or []
        tip = escape(key + ("\nmembers: " + ", ".join(members[:20]) +
                            (" …" if len(members) > 20 else "") if members else ""))
        out.append(f'<g><title>{tip}</title>')
        out.append(f'<text x="0" y="{y + 13}" font-size="12">{escape(shown)}</text>')
        wk = bar_w * kept / size if size else 0
        out.append(f'<rect x="{label_w}" y="{y}" width="{wk:.1f}" height="14" '
                   f'fill="#2a9d8f"/>')
        out.append(f'<rect x="{label_w + wk:.1f}" y="{y}" width="{bar_w - wk:.1f}" height="14" '
                   f'fill="#e76f51"/>')
        # which units: a thin strip in unit order
        for start, length, is_kept in _runs(keep, size):
            x = label_w + bar_w * start / size
            w = max(bar_w * length / size, 0.6)
            color = "#2a9d8f" if is_kept else "#e76f51"
            out.append(f'<rect x="{x:.2f}" y="{y + 17}" width="{w:.2f}" height="5" '
                       f'fill="{color}" opacity="0.75"/>')
        removed = size - kept
        pct = 100 * removed / size if size else 0
        out.append(f'<text x="{label_w + bar_w + 10}" y="{y + 13}" font-size="12">'
                   f"{kept} / {size} kept, {removed} removed ({pct:.0f}%)</text></g>")
    out.append("</svg>")
    legend = ('<p class="legend"><span><i class="sw" style="background:var(--kept)"></i>kept'
              '</span><span><i class="sw" style="background:var(--removed)"></i>removed</span>'
              "<span>upper bar: counts; thin strip: which units, in order</span>"
              "<span>units are channels, or whole heads in attention-head groups</span></p>")
    return f'{head}<div class="panel">{legend}{"".join(out)}</div>'


def _frozen_section(r: dict) -> str:
    frozen = [(str(k), str(v)) for k, v in (r.get("frozen") or [])]
    head = f"<h2>Frozen groups ({len(frozen)})</h2>"
    if not frozen:
        return head + '<p class="note">No group was frozen.</p>'
    kinds: dict[str, list[tuple[str, str]]] = {}
    for key, reason in frozen:
        kinds.setdefault(re.sub(r"'[^']*'", "'…'", reason), []).append((key, reason))
    rows = []
    for kind, items in sorted(kinds.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        reason = kind if len(items) > 1 else items[0][1]
        example = f"{items[0][0]}: {items[0][1]}" if len(items) > 1 else items[0][0]
        rows.append(f'<tr><td class="num">{len(items)}</td><td>{escape(reason)}</td>'
                    f"<td><code>{escape(example)}</code></td></tr>")
    summary = ('<table><tr><th class="num">groups</th><th>reason</th><th>group (example)</th>'
               '</tr>'
               f'{"".join(rows)}</table>')
    full = "".join(f"<tr><td><code>{escape(k)}</code></td><td>{escape(v)}</td></tr>"
                   for k, v in frozen)
    return (f"{head}{summary}<details><summary>every frozen group</summary>"
            f"<table><tr><th>group</th><th>reason</th></tr>{full}</table></details>")


def _sparsity_section(r: dict) -> str:
    """The --sparsity pass: every candidate node, where it went and the timings that decided."""
    sp = r.get("sparsity")
    if not sp:
        return ""
    nodes = sp.get("nodes") or []
    moved = sum(1 for d in nodes if d.get("decision") == "sparse")

    def ms(v):
        return "" if v is None else f"{v:.3f}"

    def times(v):
        return "" if v is None else f"x{v:.2f}"

    rows = "".join(
        f"<tr><td><code>{escape(str(d['node']))}</code></td><td>{escape(str(d['op']))}</td>"
        f"<td>{escape(str(d['shape']))}</td><td>{escape(str(d['decision']))}</td>"
        f"<td>{ms(d.get('dense_ms'))}</td><td>{ms(d.get('sparse_ms'))}</td>"
        f"<td>{times(d.get('speedup'))}</td>"
        f"<td>{escape(str(d.get('reason', '')))}</td></tr>" for d in nodes)
    how = (f"timed at batch {sp.get('batch')} with {sp.get('threads')} threads; a node moves "
           f"when at least x{sp.get('min_speedup')} faster" if sp.get("measured") else
           "every candidate moved without timing (--sparse-all)")
    return (f"<h2>Sparse operators: {moved} of {len(nodes)} nodes</h2><p class=\"note\">"
            f"Pattern {escape(str(sp.get('pattern')))}, sparsity {sp.get('sparsity', 0):.0%}; "
            f"{escape(how)}. The model needs graphprune's custom-operator library to run."
            f"</p><table><tr><th>node</th><th>op</th><th>shape</th><th>runs</th>"
            f"<th>dense ms</th><th>sparse ms</th><th>speedup</th><th>why dense</th></tr>"
            f"{rows}</table>")


def _other_lists(r: dict) -> str:
    out = []
    skipped = r.get("skipped") or {}
    if skipped:
        rows = "".join(f"<tr><td><code>{escape(str(k))}</code></td><td>{escape(str(v))}</td>"
                       "</tr>" for k, v in skipped.items())
        out.append(f"<h2>Excluded groups ({len(skipped)})</h2><table><tr><th>group</th>"
                   f"<th>why</th></tr>{rows}</table>")
    approx = r.get("approximate") or []
    if approx:
        items = "".join(f"<li><code>{escape(str(a))}</code></li>" for a in approx)
        out.append(f"<h2>Approximate groups ({len(approx)})</h2><p class=\"note\">Pruned "
                   "across a LayerNorm/RMSNorm (--prune-hidden): the norm's statistics change."
                   f"</p><ul>{items}</ul>")
    comp = r.get("compensated") or []
    if comp:
        keys = sorted({k for c in comp for k in c})[:6]
        rows = "".join("<tr>" + "".join(f"<td>{escape(str(c.get(k, '')))}</td>" for k in keys)
                       + "</tr>" for c in comp)
        out.append(f"<h2>Compensation ({len(comp)} consumers)</h2><p class=\"note\">"
                   f"{escape(str(r.get('compensation', '')))}</p><table><tr>"
                   + "".join(f"<th>{escape(k)}</th>" for k in keys) + f"</tr>{rows}</table>")
    passes = r.get("passes") or []
    if passes:
        out.append("<h2>Canonicalization</h2><p class=\"note\">Passes that changed the graph: "
                   + ", ".join(f"<code>{escape(str(x))}</code>" for x in passes) + "</p>")
    return "".join(out)


def _timing_section(r: dict) -> str:
    seconds = {k: _num(v) for k, v in (r.get("seconds") or {}).items() if _num(v) is not None}
    if not seconds:
        return ""
    width, label_w, bar_w, row_h = 1060, 190, 640, 22
    top = max(seconds.values()) or 1.0
    height = row_h * len(seconds) + 6
    out = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'role="img" aria-label="time per stage">']
    for i, (stage, s) in enumerate(seconds.items()):
        y = 3 + i * row_h
        w = bar_w * s / top
        out.append(f'<text x="0" y="{y + 12}" font-size="12">{escape(stage)}</text>')
        out.append(f'<rect x="{label_w}" y="{y}" width="{max(w, 1):.1f}" height="14" rx="2" '
                   f'fill="#264653" opacity="0.7"/>')
        out.append(f'<text x="{label_w + w + 6:.1f}" y="{y + 12}" font-size="12">'
                   f"{s * 1000:.1f} ms</text>")
    out.append("</svg>")
    total = sum(seconds.values())
    return (f"<h2>graphprune run time per stage ({total:.2f} s)</h2><div class=\"panel\">"
            f"{''.join(out)}</div>")


def _plan_section(p: dict | None) -> str:
    head = "<h2>Plan</h2>"
    if not p:
        return head + '<p class="note">No plan was given.</p>'
    groups = p.get("groups", [])
    rows = []
    for g in groups:
        size, kept = int(g.get("size") or 0), len(g.get("keep", []))
        members = g.get("members") or []
        member_text = (f"<details><summary>{len(members)} members</summary>"
                       + "<br>".join(f"<code>{escape(str(m))}</code>" for m in members)
                       + "</details>") if members else ""
        rows.append(f"<tr><td><code>{escape(str(g.get('key')))}</code></td>"
                    f'<td class="num">{size}</td><td class="num">{kept}</td>'
                    f'<td class="num">{size - kept}</td>'
                    f'<td class="num">{(100 * (size - kept) / size if size else 0):.0f}%</td>'
                    f"<td>{member_text}</td></tr>")
    table = ('<table><tr><th>group</th><th class="num">units</th><th class="num">kept</th>'
             '<th class="num">removed</th><th class="num">removed %</th><th>members</th></tr>'
             f'{"".join(rows)}</table>')
    meta = (f'<p class="note">criterion {escape(str(p.get("criterion", "")))}, ratio '
            f'{escape(str(p.get("ratio", "")))}, round-to {escape(str(p.get("round_to", "")))}, '
            f'{len(groups)} groups; replay with <code>graphprune MODEL --plan plan.json</code> '
            "(save it with <code>--save-plan</code>).</p>")
    raw = escape(json.dumps(p, indent=1))
    return (f"{head}{meta}{table}<details><summary>the plan as JSON</summary><pre>{raw}</pre>"
            "</details>")
