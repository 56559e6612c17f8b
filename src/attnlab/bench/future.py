"""The ``future`` suite: what the future-aware vision-language masks cost (spec ``future_mask.md`` §7 E3, §10 items
2-5), prefill and per-token decode measured **separately**.

Model: a small attnlab LM (:data:`N_LAYERS` layers, ``options.d_model``, ``options.n_heads``, RoPE, random weights;
the cost does not depend on them) on a visual-dominated multi-image prompt of ``L`` positions (:func:`layout`:
4 text tokens, images of :data:`IMAGE_TOKENS` = 576 visual tokens (LLaVA-1.5) separated by 4 text tokens, then the
question; as many images as leave at least ``L / 8`` positions of text). Cases, all timed in one process:

* ``causal (native)``: no token types, the layers' own causal mask (SDPA ``is_causal``; decoding without a mask).
  The denominator of every ratio.
* ``causal (explicit)``: ``TokenTypes(kind="c")``: the same causal pairs through the mask path (a dense mask).
* ``<mu> P``: ``TokenTypes(kind=mu, semantics="P")``: masked prefill, then cached decoding with the mask passed at
  every step (as :func:`attnlab.models.lm.generate` does).
* ``<mu> R``: semantics R, recompute: each generated token re-runs the whole sequence under the mask (no cache).
  Its prefill is the ``<mu> P`` prefill (the two masks agree on the prompt). On CPU (and with ``impl="sdpa"``) the
  mask is dense, so the attention work does not depend on ``mu``; on CUDA ``impl="auto"`` picks FlexAttention,
  which skips empty blocks (``R`` rows), and the dense form is measured too (``R dense``).
* ``light <mu>``: ``future-light`` layers (:mod:`attnlab.layers.future_light`, the same weights) with ``mu``: the
  merge in prefill, cached causal decoding.

Timing (:func:`attnlab.bench.measure.time_fns`, medians after warm-up, interleaved a, b, a, b, ...): the prefills of
all cases at one ``L`` together; the cached decoding steps together (each timed call appends one token to its own
cache, at most :data:`MAX_DECODE_STEPS`); the recompute steps together with a native cached step, whose median is
their ratio's denominator. ``amortised ms/token`` = ``(prefill + (n - 1) decode) / n`` for an answer of
:data:`N_ANSWER` tokens. Every case is first checked in float64 on a short layout (:func:`_checks`); a failed check
replaces its speed. The targets (§10) are reported as met or not, never asserted.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from attnlab.bench.core import BenchOptions, Suite, SuiteResult, Table, register_suite
from attnlab.bench.measure import fit_exponent, time_fns
from attnlab.bench.steps import (check_tolerance, half_device_memory, no_grad, number, progress, pyplot,
                                 relative_error, save_figure, short_error)
from attnlab.masks.vlm import TokenTypes
from attnlab.models.lm import LMConfig

__all__ = ["run_future", "plot_future", "layout", "extra_pair_counts", "case_labels", "PAPER_DECODE_MS",
           "PAPER_SPEEDUP", "IMAGE_TOKENS", "MUS"]

MUS = ("f", "v2v", "v2t")
IMAGE_TOKENS = 576  # LLaVA-1.5: 24 x 24 patches per image (spec §1.2)
QUICK_IMAGE_TOKENS = 8
N_LAYERS = 2
VOCAB = 256
N_ANSWER = 16  # answer length of the amortised figure (spec §7 E3: 8-32 tokens)
MAX_DECODE_STEPS = 48  # every timed cached step appends a token: keep the context drift small
#: spec §8.5, Tab. 6 (LLaVA-7B, context 4096, ms/token without / with merge; from secondary summaries of the
#: paper, not checked against its tables)
PAPER_DECODE_MS = {"f": (83.1783, 26.5362), "v2v": (64.1266, 26.4037), "v2t": (43.0362, 26.1051)}
PAPER_SPEEDUP = {mu: r / m for mu, (r, m) in PAPER_DECODE_MS.items()}  # 3.13x / 2.43x / 1.65x
PAPER_L = 4096
DECODE_TOL = 0.05  # §10: P and light decode within +-5% of native causal
LIGHT_PREFILL_TARGET = 1.3  # issue 9: light prefill at 4k at most 1.3x causal
NATIVE, EXPLICIT = "causal (native)", "causal (explicit)"

MAIN_COLUMNS = ["L", "images", "visual", "case", "status", "prefill ms", "prefill ×causal", "prefill ×explicit",
                "decode ms/token",
                "decode ×causal", "amortised ms/token", "amortised ×causal", "extra pairs"]
SPEEDUP_COLUMNS = ["L", "mu", "R case", "R ms/token", "light ms/token", "speed-up per token", "amortised speed-up",
                   "paper speed-up (Tab. 6, 4096)"]
TARGET_COLUMNS = ["target", "case", "L", "measured", "met"]
CHECK_COLUMNS = ["check", "covers", "error", "status"]


def layout(L: int, image_tokens: int = IMAGE_TOKENS) -> Tensor:
    """``is_visual`` ``(L,)``: 4 text tokens, ``n`` images of ``image_tokens`` separated by 4 text tokens, then the
    question; ``n`` is the most that leaves ``max(16, L // 8)`` text positions (``--quick``: images of
    :data:`QUICK_IMAGE_TOKENS`). Raises ``ValueError`` naming
    ``lengths`` when not even one image fits."""
    gap, prefix = 4, 4

    def n_images(n: int) -> int:
        return (n - max(16, n // 8)) // (image_tokens + gap)

    n = n_images(L)
    if n < 1:
        least = next(m for m in range(image_tokens + gap + 16, 2 * image_tokens + 64) if n_images(m) >= 1)
        raise ValueError(f"lengths: L={L} is too short for one image of {image_tokens} visual tokens plus "
                         f"max(16, L // 8) text tokens; use L >= {least}")
    vis = torch.zeros(L, dtype=torch.bool)
    for i in range(n):
        start = prefix + i * (image_tokens + gap)
        vis[start:start + image_tokens] = True
    return vis


def extra_pair_counts(is_visual: Tensor) -> dict[str, int]:
    """The non-causal pairs of spec §2.2 in closed form (no padding): ``E_v2v``, ``E_v2t``, ``E_f``."""
    vis = is_visual.long()
    later_v = vis.flip(0).cumsum(0).flip(0) - vis  # (L,): visual positions after i
    later_t = (1 - vis).flip(0).cumsum(0).flip(0) - (1 - vis)  # (L,): text positions after i
    v2v, v2t = int((later_v * vis).sum()), int((later_t * vis).sum())
    return {"v2v": v2v, "v2t": v2t, "f": v2v + v2t}


def case_labels(cuda: bool) -> list[str]:
    """Every case of one ``L``, in table order (``R dense`` only on CUDA, where ``R`` is block-sparse)."""
    r = [f"{mu} R" for mu in MUS] + ([f"{mu} R dense" for mu in MUS] if cuda else [])
    return [NATIVE, EXPLICIT, *(f"{mu} P" for mu in MUS), *r, *(f"light {mu}" for mu in MUS)]


def _models(options: BenchOptions, context_len: int, dtype: torch.dtype, device: str) -> dict[str, torch.nn.Module]:
    """``standard`` (impl auto), ``dense`` (impl sdpa, CUDA only) and ``light <mu>``, all with the same weights."""
    base = LMConfig(vocab_size=VOCAB, n_layers=N_LAYERS, d_model=options.d_model, n_heads=options.n_heads,
                    context_len=context_len, attention="standard")
    torch.manual_seed(0)
    std = base.build()
    variants = {f"light {mu}": dataclasses.replace(base, attention="future-light",
                                                    attention_options={"future-light": {"mu": mu}}) for mu in MUS}
    if torch.device(device).type == "cuda":
        variants["dense"] = dataclasses.replace(base, attention_options={"standard": {"impl": "sdpa"}})
    models = {"standard": std}
    for name, cfg in variants.items():
        models[name] = cfg.build()
        models[name].load_state_dict(std.state_dict())
    return {k: m.to(device=device, dtype=dtype).eval() for k, m in models.items()}


def _spec(label: str) -> tuple[str, Callable[[Tensor], TokenTypes] | None, bool]:
    """``(model key, token-types factory or None, recompute)`` of a case label."""
    parts = label.split()
    if label == NATIVE:
        return "standard", None, False
    if label == EXPLICIT or parts[0] == "light":  # light layers take the types; kind does not reach them
        return ("standard" if label == EXPLICIT else label), (lambda v: TokenTypes(is_visual=v, kind="c")), False
    mu, sem = parts[0], parts[1]
    return ("dense" if label.endswith("dense") else "standard",
            lambda v, mu=mu, sem=sem: TokenTypes(is_visual=v, kind=mu, semantics=sem), sem == "R")


def _kw(label: str, vis: Tensor) -> dict[str, Any]:
    make = _spec(label)[1]
    return {} if make is None else {"token_types": make(vis)}


def _checks(models: dict[str, torch.nn.Module], labels: list[str], options: BenchOptions) -> list[dict[str, Any]]:
    """float64 checks on a short layout: explicit causal == native; P prefill + cached decoding == recomputing
    under the P mask; R v2v == P v2v and R f / v2t let visual rows see generated tokens; the light prefill's backend
    == its reference and its rows before the first image == native."""
    vis = layout(48, 8)
    n_gen, tol = 3, check_tolerance(torch.float64)
    first_v = int(vis.nonzero()[0])
    m64 = {k: copy.deepcopy(m).to(device="cpu", dtype=torch.float64) for k, m in models.items()}
    ids = torch.randint(0, VOCAB, (1, 48 + n_gen), generator=torch.Generator().manual_seed(1))
    rows: list[dict[str, Any]] = []

    def add(check: str, covers: list[str], fn: Callable[[], float], low: float | None = None) -> None:
        row: dict[str, Any] = {"check": check, "covers": ", ".join(covers)}
        try:
            with torch.no_grad():
                err = fn()
            row["error"] = err
            row["status"] = ("ok" if err > low else f"FAILED: difference {err:.3g} <= {low:g}") if low is not None \
                else ("ok" if err <= tol else f"FAILED correctness: max error {err:.3g} > tolerance {tol:.3g}")
        except Exception as exc:  # reported, not hidden
            row["status"] = short_error(exc)
        rows.append(row)

    def full(label: str, n: int) -> Tensor:
        return m64[_spec(label)[0]](ids[:, :n], **_kw(label, vis))  # (1, n, V)

    def cached(label: str) -> Tensor:
        model = m64[_spec(label)[0]]
        caches = model.new_caches(1)
        out = [model(ids[:, :48], caches=caches, **_kw(label, vis))]
        out += [model(ids[:, t:t + 1], caches=caches, **_kw(label, vis)) for t in range(48, 48 + n_gen)]
        return torch.cat(out, dim=1)  # (1, 48 + n_gen, V)

    add("explicit causal mask == native is_causal (prefill + generated)", [EXPLICIT],
        lambda: relative_error(full(EXPLICIT, 48 + n_gen), full(NATIVE, 48 + n_gen)))
    for mu in MUS:
        add(f"{mu} P: prefill + cached decoding == recompute under the P mask", [f"{mu} P"],
            lambda mu=mu: relative_error(cached(f"{mu} P"), full(f"{mu} P", 48 + n_gen)))
    add("v2v R == v2v P (spec §3: they coincide)", [lb for lb in labels if lb.startswith("v2v R")],
        lambda: relative_error(full("v2v R", 48 + n_gen), full("v2v P", 48 + n_gen)))
    for mu in ("f", "v2t"):
        add(f"{mu} R: visual rows see generated tokens (differ from P)", [lb for lb in labels
                                                                          if lb.startswith(f"{mu} R")],
            lambda mu=mu: float((full(f"{mu} R", 48 + n_gen) - full(f"{mu} P", 48 + n_gen))[0, :48][vis].abs().max()),
            low=1e-6)
    for mu in MUS:
        light = m64[f"light {mu}"]

        def light_err(mu: str = mu, light: torch.nn.Module = light) -> float:
            got = full(f"light {mu}", 48)
            for b in light.blocks:
                b.attn.impl = "reference"
            try:
                ref = full(f"light {mu}", 48)
            finally:
                for b in light.blocks:
                    b.attn.impl = "auto"
            pre = relative_error(got[:, :first_v], full(NATIVE, 48)[:, :first_v])
            return max(relative_error(got, ref), pre)

        add(f"light {mu}: backend == reference; rows before the first image == native", [f"light {mu}"], light_err)
    return rows


def _status(label: str, checks: list[dict[str, Any]]) -> str:
    bad = [c["status"] for c in checks if label in c["covers"].split(", ") and c["status"] != "ok"]
    return bad[0] if bad else "ok"


def _measure_L(L: int, image_tokens: int, models: dict[str, torch.nn.Module], labels: list[str],
               statuses: dict[str, str], options: BenchOptions) -> list[dict[str, Any]]:
    vis = layout(L, image_tokens).to(options.device)
    B = options.batch_size
    gen = torch.Generator().manual_seed(L)
    ids = torch.randint(0, VOCAB, (B, L + 2 * MAX_DECODE_STEPS + 8), generator=gen).to(options.device)
    ok = [lb for lb in labels if statuses[lb] == "ok"]
    kw = options.timing()

    def prefill(label: str) -> Callable[[], Any]:
        model, args = models[_spec(label)[0]], _kw(label, vis)
        return no_grad(lambda: model(ids[:, :L], caches=model.new_caches(B), **args))

    def decoder(label: str) -> Callable[[], Any]:
        model, args, recompute = models[_spec(label)[0]], _kw(label, vis), _spec(label)[2]
        state = {"n": L, "caches": None}
        if not recompute:
            state["caches"] = model.new_caches(B)
            with torch.no_grad():
                model(ids[:, :L], caches=state["caches"], **args)

        def step() -> Any:
            n = state["n"]
            state["n"] = n + 1
            with torch.no_grad():
                if recompute:  # the whole sequence: prompt + the tokens generated so far
                    return model(ids[:, :n + 1], **args)[:, -1]
                return model(ids[:, n:n + 1], caches=state["caches"], **args)

        return step

    rows = {lb: {"L": L, "case": lb, "status": statuses[lb]} for lb in labels}
    pre = time_fns({lb: prefill(lb) for lb in ok if not _spec(lb)[2]}, **kw)
    cached = [lb for lb in ok if not _spec(lb)[2]]
    dec = time_fns({lb: decoder(lb) for lb in cached}, **{**kw, "max_repeats": MAX_DECODE_STEPS})
    recompute = [lb for lb in ok if _spec(lb)[2]]
    rec = time_fns({"base": decoder(NATIVE), **{lb: decoder(lb) for lb in recompute}},
                   **{**kw, "max_repeats": max(options.repeats, 3)}) if recompute else {}
    for lb in ok:
        r = rows[lb]
        p_label = lb.replace(" R dense", " P").replace(" R", " P")
        if p_label in pre:
            r["prefill ms"] = pre[p_label].median * 1e3
            r["prefill ×causal"] = pre[p_label].median / pre[NATIVE].median
            if EXPLICIT in pre:
                r["prefill ×explicit"] = pre[p_label].median / pre[EXPLICIT].median
        timing, base = (rec[lb], rec["base"]) if lb in rec else (dec[lb], dec[NATIVE])
        r["decode ms/token"] = timing.median * 1e3
        r["decode ×causal"] = timing.median / base.median
        if "prefill ms" in r:
            r["amortised ms/token"] = (r["prefill ms"] + (N_ANSWER - 1) * r["decode ms/token"]) / N_ANSWER
    native = rows[NATIVE].get("amortised ms/token")
    pairs = extra_pair_counts(vis.cpu())
    for r in rows.values():
        r.update(images=_n_images(vis), visual=int(vis.sum()))
        if native and "amortised ms/token" in r:
            r["amortised ×causal"] = r["amortised ms/token"] / native
        mu = r["case"].split()[-1] if r["case"].startswith("light") else r["case"].split()[0]
        r["extra pairs"] = pairs.get(mu, 0)
    return list(rows.values())


def _n_images(vis: Tensor) -> int:
    v = vis.long()
    return int(((v[1:] - v[:-1]) == 1).sum()) + int(v[0])


def _speedups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for L in dict.fromkeys(r["L"] for r in rows):
        at = {r["case"]: r for r in rows if r["L"] == L}
        for mu in MUS:
            light = at.get(f"light {mu}", {})
            for rc in (f"{mu} R", f"{mu} R dense"):
                r = at.get(rc)
                if r is None:
                    continue
                row: dict[str, Any] = {"L": L, "mu": mu, "R case": rc, "R ms/token": r.get("decode ms/token"),
                                       "light ms/token": light.get("decode ms/token"),
                                       "paper speed-up (Tab. 6, 4096)": PAPER_SPEEDUP[mu]}
                row["speed-up per token"] = number(row["R ms/token"]) / number(row["light ms/token"])
                row["amortised speed-up"] = number(r.get("amortised ms/token")) / number(
                    light.get("amortised ms/token"))
                out.append(row)
    return out


def _met(ok: bool | None) -> str:
    return "not measured" if ok is None else ("met" if ok else "NOT met")


def _targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """§10 / issue 9 targets, from the measurements (never asserted)."""
    out: list[dict[str, Any]] = []
    ok = [r for r in rows if r["status"] == "ok"]
    for r in ok:
        if r["case"].endswith(" P") or r["case"].startswith("light"):
            d = number(r.get("decode ×causal"))
            out.append({"target": f"decode within ±{DECODE_TOL:.0%} of native causal", "case": r["case"], "L": r["L"],
                        "measured": d, "met": _met(abs(d - 1) <= DECODE_TOL if d == d else None)})
    for mu in MUS:
        at4k = [r for r in ok if r["case"] == f"light {mu}" and r["L"] == PAPER_L]
        p = number(at4k[0].get("prefill ×causal")) if at4k else float("nan")
        out.append({"target": f"light prefill at L={PAPER_L} <= {LIGHT_PREFILL_TARGET}x causal", "case": f"light {mu}",
                    "L": PAPER_L, "measured": p, "met": _met(p <= LIGHT_PREFILL_TARGET if p == p else None)})
    for suffix in (" R", " R dense"):
        for mu in MUS:
            mine = sorted((r["L"], number(r.get("decode ms/token"))) for r in ok if r["case"] == mu + suffix)
            if not mine:
                continue
            e = fit_exponent([x for x, _ in mine], [y for _, y in mine])
            grows = None if len(mine) < 2 else all(b[1] > a[1] for a, b in zip(mine, mine[1:]))
            out.append({"target": "R decode grows with L (fitted exponent in L)", "case": mu + suffix,
                        "L": ",".join(str(x) for x, _ in mine), "measured": e, "met": _met(grows)})
        for L in sorted({r["L"] for r in ok}):
            t = [number(next((r.get("decode ms/token") for r in ok if r["L"] == L and r["case"] == mu + suffix),
                             None)) for mu in MUS]
            if all(x == x for x in t):
                out.append({"target": "R decode ordering f > v2v > v2t", "case": "f, v2v, v2t" + suffix, "L": L,
                            "measured": " > ".join(f"{x:.3g}" for x in t), "met": _met(t[0] > t[1] > t[2])})
    return out


def run_future(options: BenchOptions) -> SuiteResult:
    """Run the ``future`` suite (see the module docstring)."""
    image_tokens = QUICK_IMAGE_TOKENS if options.quick else IMAGE_TOKENS
    lengths = options.lengths_or(cpu=(1024, 2048, 4096, 8192), cuda=(1024, 2048, 4096, 8192), quick=(64, 128))
    for L in lengths:
        layout(L, image_tokens)  # refuses a length without room for an image, before anything is measured
    labels = case_labels(options.is_cuda)
    itemsize = torch.empty((), dtype=options.dtype).element_size()
    # a dense-mask forward holds about the bool mask, its float copy and H score matrices of L x L
    fits = [L for L in lengths if options.batch_size * L * L * (5 + 2 * options.n_heads * itemsize)
            <= half_device_memory(options)]
    models = _models(options, max(lengths) + 2 * MAX_DECODE_STEPS + 8, options.dtype, options.device)
    checks = _checks(models, labels, options)
    statuses = {lb: _status(lb, checks) for lb in labels}
    rows: list[dict[str, Any]] = []
    for L in progress(list(lengths), options, "future"):
        if L not in fits:
            rows += [{"L": L, "case": lb, "status": "skipped: a dense L x L mask would not fit half the memory"}
                     for lb in labels]
            continue
        try:
            rows += _measure_L(L, image_tokens, models, labels, statuses, options)
        except Exception as exc:  # reported, not hidden
            rows += [{"L": L, "case": lb, "status": short_error(exc)} for lb in labels]
    backend = "FlexAttention (block-sparse) for R, dense SDPA for R dense" if options.is_cuda else \
        "dense SDPA masks (no block skipping on CPU: the ordering of R by mask is not expected)"
    notes = [f"attnlab LM: {N_LAYERS} layers, d_model {options.d_model}, {options.n_heads} heads, RoPE, vocab {VOCAB}, "
             f"batch {options.batch_size}, {str(options.dtype).removeprefix('torch.')} on {options.device}; images of "
             f"{image_tokens} visual tokens (layout: 4 text, images separated by 4 text, question >= L/8).",
             f"Masks: {backend}. R prefill = P prefill (same mask over the prompt). Ratios divide by native causal "
             "timed interleaved with the case in this process (R: a native cached step timed with the R steps); "
             "prefill ×explicit divides by the explicit causal mask's prefill.",
             f"Amortised ms/token: (prefill + {N_ANSWER - 1} decode steps) / {N_ANSWER} answer tokens. Extra pairs: "
             "the non-causal pairs of the mask (spec §2.2).",
             "Paper (spec §8.5, Tab. 6, LLaVA-7B at 4096 with FlashAttention 2.6.3 block-wise masks; from secondary "
             "summaries, not checked): light vs unmerged decode " + ", ".join(
                 f"{mu} {PAPER_DECODE_MS[mu][0]:.2f} -> {PAPER_DECODE_MS[mu][1]:.2f} ms ({PAPER_SPEEDUP[mu]:.2f}x)"
                 for mu in MUS) + ". Different model, hardware and kernel: compare orderings, not values.",
             "Targets are reported, never asserted: machine noise moves ratios by several percent."]
    tables = [Table(title="prefill and per-token decode vs native causal", columns=MAIN_COLUMNS, rows=rows),
              Table(title="light vs R: decode speed-up (paper: 3.13x / 2.43x / 1.65x at 4096)",
                    columns=SPEEDUP_COLUMNS, rows=_speedups(rows)),
              Table(title="targets (spec §10, issue 9)", columns=TARGET_COLUMNS, rows=_targets(rows)),
              Table(title="correctness checks (float64, L=48, 3 generated tokens)", columns=CHECK_COLUMNS,
                    rows=checks)]
    return SuiteResult(suite="future", options=options, tables=tables, notes=notes, data={"rows": rows})


def plot_future(result: SuiteResult, stem: Path) -> list[Path]:
    plt = pyplot()
    rows = [r for r in result.data["rows"] if r["status"] == "ok"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, title in ((axes[0], "prefill ×causal", "prefill / native causal"),
                           (axes[1], "decode ×causal", "per-token decode / native causal")):
        for i, case in enumerate(dict.fromkeys(r["case"] for r in rows)):
            pts = [(r["L"], r[key]) for r in rows if r["case"] == case and key in r]
            if pts and not (key.startswith("prefill") and " R" in case):  # R prefill = P prefill
                ax.plot(*zip(*pts), marker="o", label=case, linestyle="--" if " R" in case else "-",
                        color=plt.get_cmap("tab20")(i % 20))
        ax.set(xscale="log", yscale="log", title=title, xlabel="L (prompt positions)", ylabel="ratio")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    return [save_figure(fig, stem)]


register_suite(Suite(name="future", description="future-aware VLM masks (P, R) and the light merge vs causal: "
                     "prefill and per-token decode, speed-ups vs the paper, targets", run=run_future,
                     plot=plot_future))
