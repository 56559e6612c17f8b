"""Influence maps of the future-aware vision-language masks (spec ``future_mask.md`` §7 E2): which input position
each output position depends on, per mask, at the first and the last layer. ``attnlab vlm influence`` runs it.

Not a timed suite: it measures what a mask *opens*, not what it costs (that is the ``future`` suite), so it has its
own command and options rather than :class:`~attnlab.bench.core.BenchOptions`.

Definition (spec E2): ``Δ[i, j] = ||h_i^(l)(x with x_j perturbed) - h_i^(l)(x)||`` for layer ``l`` = 1 and the last,
``h^(l)`` the residual stream after block ``l`` of a small random attnlab LM (float64, RoPE) fed input embeddings
``x`` ``(1, L, d_model)`` on the two-image layout of :func:`attnlab.masks.render.example_vlm_layout` (text prefix,
image A, text, image B, question). The perturbation adds a fixed random vector of norm ``eps * sqrt(d_model)`` to
``x_j``; each perturbed input runs alone (batch 1, the same shapes as the unperturbed run), so a position that cannot
reach ``h_i`` leaves it bitwise unchanged and ``Δ[i, j]`` is exactly 0.

Kinds: ``c``, ``f``, ``v2v``, ``v2t`` (``standard`` layers under ``TokenTypes(kind=...)``, semantics P) and
``light`` (``future-light`` layers, the same weights, ``mu=light_mu``). What to expect (spec E2): at layer 1 the
future support (``j > i``, ``Δ > 0``) of ``c``/``f``/``v2v``/``v2t`` is exactly the mask's; at the last layer text rows
after the first image pick up indirect future dependence; rows before the first image stay causal; ``light``'s
visual rows depend on future keys only through the pooled score (with ``pool=max`` only the positions that win the
maximum move it). :func:`influence_checks` tests these and the command reports them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from attnlab._validation import check_float, check_int
from attnlab.bench.steps import pyplot, save_figure
from attnlab.masks.core import dense
from attnlab.masks.render import example_vlm_layout
from attnlab.masks.vlm import TokenTypes, future_mask, token_types
from attnlab.models.lm import LMConfig

__all__ = ["InfluenceConfig", "QUICK", "INFLUENCE_KINDS", "influence_maps", "influence_checks", "plot_influence",
           "write_influence"]

INFLUENCE_KINDS = ("c", "f", "v2v", "v2t", "light")
MAX_LENGTH = 512  # L + 1 forwards per kind; a picture is about 500 pixels wide


@dataclass(frozen=True, kw_only=True)
class InfluenceConfig:
    """What :func:`influence_maps` computes.

    Attributes:
        length: prompt positions ``L`` (the two-image layout of ``example_vlm_layout``), 16 to 512.
        d_model, n_heads, n_layers: the LM's sizes (``n_heads`` divides ``d_model``; at least 2 layers, so that the
            first and the last differ).
        kinds: a subset of :data:`INFLUENCE_KINDS`.
        light_mu: the future region of the ``light`` kind: ``"f"``, ``"v2v"`` or ``"v2t"``.
        eps: perturbation size per dimension (the added vector has norm ``eps * sqrt(d_model)``), > 0.
        seed: weights, inputs and perturbations.
    """

    length: int = 96
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 4
    kinds: tuple[str, ...] = INFLUENCE_KINDS
    light_mu: str = "f"
    eps: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("length", self.length, 16)
        if self.length > MAX_LENGTH:
            raise ValueError(f"length must be <= {MAX_LENGTH} (L + 1 forwards per kind; a picture is about 500 "
                             f"pixels wide), got {self.length}")
        check_int("d_model", self.d_model, 1)
        check_int("n_heads", self.n_heads, 1)
        check_int("n_layers", self.n_layers, 2)
        check_int("seed", self.seed, 0)
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(f"n_heads={self.n_heads} must divide d_model={self.d_model} into an even head dim (RoPE)")
        kinds = tuple(self.kinds) if isinstance(self.kinds, (tuple, list)) else ()
        if not kinds or any(k not in INFLUENCE_KINDS for k in kinds) or len(set(kinds)) != len(kinds):
            raise ValueError(f"kinds must be distinct values of {INFLUENCE_KINDS}, got {self.kinds!r}")
        if self.light_mu not in ("f", "v2v", "v2t"):
            raise ValueError(f"light_mu must be one of ('f', 'v2v', 'v2t'), got {self.light_mu!r}")
        check_float("eps", self.eps, low=0.0, low_inclusive=False, high=math.inf)

    @property
    def is_visual(self) -> Tensor:
        return token_types(example_vlm_layout(self.length))


#: the size the tests and ``attnlab vlm influence --quick`` use (well under a second per kind)
QUICK = InfluenceConfig(length=24, d_model=16, n_heads=2, n_layers=2)


def _models(cfg: InfluenceConfig) -> dict[str, torch.nn.Module]:
    base = LMConfig(vocab_size=16, n_layers=cfg.n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads,
                    context_len=cfg.length, attention="standard")
    torch.manual_seed(cfg.seed)
    std = base.build().double().eval()
    models = {"standard": std}
    if "light" in cfg.kinds:
        light = dataclasses.replace(base, attention="future-light",
                                    attention_options={"future-light": {"mu": cfg.light_mu}}).build().double()
        light.load_state_dict(std.state_dict())
        models["light"] = light.eval()
    return models


def _hidden(model: torch.nn.Module, x: Tensor, types: TokenTypes, layers: tuple[int, ...]) -> list[Tensor]:
    """The residual stream ``(L, C)`` after each block in ``layers`` (0-based)."""
    got: dict[int, Tensor] = {}
    hooks = [model.blocks[i].register_forward_hook(lambda _m, _a, out, i=i: got.__setitem__(i, out[0].detach()))
             for i in layers]
    try:
        with torch.no_grad():
            model(inputs_embeds=x, token_types=types)
    finally:
        for h in hooks:
            h.remove()
    return [got[i] for i in layers]


def influence_maps(cfg: InfluenceConfig) -> dict[str, list[Tensor]]:
    """``{kind: [Δ at layer 1, Δ at the last layer]}``, each float64 ``(L, L)`` (row ``i`` output, column ``j``
    perturbed input); see the module docstring."""
    vis = cfg.is_visual
    L, C = cfg.length, cfg.d_model
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    x = torch.randn(1, L, C, generator=gen, dtype=torch.float64)
    delta = torch.randn(L, C, generator=gen, dtype=torch.float64)
    delta = delta / delta.norm(dim=-1, keepdim=True) * cfg.eps * math.sqrt(C)  # (L, C)
    models = _models(cfg)
    layers = (0, cfg.n_layers - 1)
    out: dict[str, list[Tensor]] = {}
    for kind in cfg.kinds:
        model = models["light" if kind == "light" else "standard"]
        types = TokenTypes(is_visual=vis, kind="c" if kind == "light" else kind)  # type: ignore[arg-type]
        base = _hidden(model, x, types, layers)
        maps = [torch.zeros(L, L, dtype=torch.float64) for _ in layers]
        for j in range(L):
            xj = x.clone()
            xj[0, j] += delta[j]
            for m, h, h0 in zip(maps, _hidden(model, xj, types, layers), base):
                m[:, j] = (h - h0).norm(dim=-1)  # (L,)
        out[kind] = maps
    return out


def _future_support(kind: str, vis: Tensor, light_mu: str) -> Tensor:
    """bool ``(L, L)``: the future pairs ``j > i`` a kind's mask admits (``light``: the region ``mu`` admits)."""
    L = vis.shape[0]
    m = dense(future_mask(light_mu if kind == "light" else kind, vis), L, L)  # (L, L)  # type: ignore[arg-type]
    return m & torch.ones(L, L, dtype=torch.bool).triu(1)


def influence_checks(cfg: InfluenceConfig, maps: dict[str, list[Tensor]]) -> list[dict[str, Any]]:
    """What spec E2 expects, per kind: ``{"kind", "check", "ok"}`` rows (a check that can fail)."""
    vis = cfg.is_visual
    L = vis.shape[0]
    upper = torch.ones(L, L, dtype=torch.bool).triu(1)
    first_v = int(vis.nonzero()[0])
    text_after = (~vis) & (torch.arange(L) > first_v)
    rows = []
    for kind, (first, last) in maps.items():
        support = _future_support(kind, vis, cfg.light_mu)
        opened = (first > 0) & upper
        if kind == "light":
            rows.append({"kind": kind, "check": f"layer 1: future influence only inside the visual rows' admitted "
                         f"region (mu={cfg.light_mu}), and some there", "ok": bool(not (opened & ~support).any()
                                                                                  and opened.any())})
        else:
            rows.append({"kind": kind, "check": "layer 1: future influence (j > i) exactly on the mask's future pairs",
                         "ok": bool(torch.equal(opened, support))})
        rows.append({"kind": kind, "check": "every layer: rows before the first image causal",
                     "ok": bool(not ((last[:first_v] > 0) & upper[:first_v]).any())})
        indirect = bool(((last > 0) & upper)[text_after].any())
        rows.append({"kind": kind, "check": "last layer: text rows after the first image see the future indirectly"
                     + (" (none expected under c)" if kind == "c" else ""), "ok": indirect != (kind == "c")})
    return rows


def _segments(vis: Tensor) -> list[int]:
    """Positions where the token type changes (boundaries drawn on the pictures)."""
    return [i for i in range(1, vis.shape[0]) if bool(vis[i] != vis[i - 1])]


def _draw(ax, m: Tensor, vis: Tensor, title: str, fig) -> None:
    import numpy as np

    arr = np.ma.masked_equal(m.numpy(), 0.0)
    img = ax.imshow(np.ma.log10(arr), cmap="viridis", interpolation="nearest", aspect="equal")
    fig.colorbar(img, ax=ax, fraction=0.046, pad=0.04, label="log10 Δ (white: exactly 0)")
    for b in _segments(vis):
        ax.axhline(b - 0.5, color="red", lw=0.6, ls=":")
        ax.axvline(b - 0.5, color="red", lw=0.6, ls=":")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("perturbed input position j", fontsize=8)
    ax.set_ylabel("output position i", fontsize=8)


def _title(kind: str, cfg: InfluenceConfig) -> str:
    return f"light (mu={cfg.light_mu})" if kind == "light" else {"c": "M^c causal", "f": "M^f", "v2v": "M^v2v",
                                                                 "v2t": "M^v2t"}[kind]


def plot_influence(cfg: InfluenceConfig, maps: dict[str, list[Tensor]], out: Path) -> list[Path]:
    """One ``influence-<kind>.png`` per kind (layer 1 beside the last layer), then ``influence-gallery.png``."""
    plt = pyplot()
    vis = cfg.is_visual
    labels = ("layer 1", f"layer {cfg.n_layers} (last)")
    paths = []
    for kind, pair in maps.items():
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
        for ax, m, lab in zip(axes, pair, labels):
            _draw(ax, m, vis, f"{_title(kind, cfg)}: {lab}", fig)
        fig.suptitle("influence Δ[i, j] = ||h_i(x + δ_j) - h_i(x)||; red lines: text/visual boundaries", fontsize=9)
        paths.append(save_figure(fig, out / f"influence-{kind}", rect=(0, 0, 1, 0.95)))
    fig, axes = plt.subplots(len(maps), 2, figsize=(10, 4.4 * len(maps)), squeeze=False)
    for row, (kind, pair) in zip(axes, maps.items()):
        for ax, m, lab in zip(row, pair, labels):
            _draw(ax, m, vis, f"{_title(kind, cfg)}: {lab}", fig)
    paths.append(save_figure(fig, out / "influence-gallery"))
    return paths


def write_influence(cfg: InfluenceConfig, out: str | Path, *, command: str) -> tuple[list[dict[str, Any]], list[Path]]:
    """Compute the maps, draw them into ``out`` and write ``influence.md`` (the command, sizes, layout and the
    checks) and ``influence.pt`` (the maps); returns ``(checks, written paths)``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    maps = influence_maps(cfg)
    checks = influence_checks(cfg, maps)
    paths = plot_influence(cfg, maps, out)
    pt = out / "influence.pt"
    torch.save({"config": dataclasses.asdict(cfg), "is_visual": cfg.is_visual, "maps": maps}, pt)
    md = out / "influence.md"
    lines = ["# Influence maps of the future-aware masks (spec future_mask.md §7 E2)", "", f"- command: `{command}`",
             f"- LM: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads, RoPE, random weights, float64; "
             f"perturbation norm {cfg.eps:g} * sqrt(d_model); seed {cfg.seed}",
             f"- layout (L={cfg.length}): `{example_vlm_layout(cfg.length)}`", "",
             "| kind | check | result |", "|---|---|---|"]
    lines += [f"| {c['kind']} | {c['check']} | {'ok' if c['ok'] else 'FAILED'} |" for c in checks]
    lines += [""] + [f"![{p.stem}]({p.name})" for p in paths] + [""]
    md.write_text("\n".join(lines))
    return checks, [*paths, md, pt]
