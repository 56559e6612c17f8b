"""LM training-step benchmark: attnlab's trainer step against a minimal GPT of the same architecture, on CPU.

Both sides run the ``shakespeare-char-cpu`` preset's setting (4 layers, 4 heads, d_model 128, context 64, batch
12, vocabulary 65, float32, AdamW with weight decay on 2-D weights, gradient clipping at 1.0, one thread):

* **attnlab**: ``Trainer.train_step()`` of a ``Trainer`` built from the preset (the task's model, batches, loss,
  backward, clip, AdamW step), exactly what ``attnlab train`` runs per step;
* **reference**: a minimal GPT written below with no attnlab imports (pre-norm, ``nn.RMSNorm``, RoPE from
  cos/sin tables computed once, SwiGLU with fused gate/up, tied embeddings, ``F.scaled_dot_product_attention``
  with ``is_causal=True``), trained on the same batches with the same optimizer settings.

Before timing, the reference is loaded with attnlab's initial weights and both models' float64 logits and losses
are compared: the two are the same function, so the timing compares implementations, not architectures.

Timing: warm-up, then ``--rounds`` rounds of ``--steps`` optimizer steps of each, alternating which goes first;
tokens/s per round (wall clock, and per second of this thread's CPU time), the median over rounds of each and the
median of the per-round ratios. Then ``torch.profiler`` over attnlab's steps, top operations by self CPU time.
``--compile`` repeats all of it with both models under ``torch.compile``. Writes
``benchmarks/results/lm-step-cpu.md``.

    .venv/bin/python benchmarks/lm_step.py [--rounds 7] [--steps 30] [--compile] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ------------------------------------------------------------------------------------------------------------------
# The reference: a minimal GPT of the same architecture (B batch, T length, C d_model, H heads, D head dim)


class RefAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, C // self.n_heads).permute(2, 0, 3, 1, 4)  # (B, H, T, D)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, D)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


def rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate-half RoPE: dimension i paired with i + D/2."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class RefBlock(nn.Module):
    def __init__(self, d_model: int, n_heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.RMSNorm(d_model, eps=1e-5)
        self.attn = RefAttention(d_model, n_heads)
        self.norm2 = nn.RMSNorm(d_model, eps=1e-5)
        self.gate_up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x), cos, sin)
        g, u = self.gate_up(self.norm2(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(g) * u)


class RefGPT(nn.Module):
    def __init__(self, vocab: int, n_layers: int, d_model: int, n_heads: int, hidden: int, context: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d_model)
        self.blocks = nn.ModuleList(RefBlock(d_model, n_heads, hidden) for _ in range(n_layers))
        self.norm = nn.RMSNorm(d_model, eps=1e-5)
        self.head = nn.Linear(d_model, vocab, bias=False)
        self.head.weight = self.emb.weight
        self.set_rope_tables(context, d_model // n_heads, torch.float32)

    def set_rope_tables(self, context: int, D: int, dtype: torch.dtype) -> None:
        """cos and sin ``(T, D)`` of every position, computed once in float64 and stored in ``dtype``."""
        inv = 1.0 / (10000.0 ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
        ang = torch.arange(context, dtype=torch.float64)[:, None] * inv[None, :]
        ang = torch.cat((ang, ang), dim=-1)  # (T, D)
        self.register_buffer("cos", ang.cos().to(dtype), persistent=False)
        self.register_buffer("sin", ang.sin().to(dtype), persistent=False)

    def forward(self, idx: Tensor) -> Tensor:
        T = idx.shape[1]
        cos, sin = self.cos[:T], self.sin[:T]
        x = self.emb(idx)
        for b in self.blocks:
            x = b(x, cos, sin)
        return self.head(self.norm(x))


# ------------------------------------------------------------------------------------------------------------------


def build(compile_: bool):
    from attnlab.train.presets import get_preset
    from attnlab.train.trainer import Trainer

    cfg = replace(get_preset("shakespeare-char-cpu"), device="cpu", threads=1, progress=False, tensorboard=False,
                  compile=compile_)
    trainer = Trainer(cfg, out_dir=None, log=None)
    m = trainer.model
    mc = m.config
    ref = RefGPT(mc.vocab_size, mc.n_layers, mc.d_model, mc.n_heads, mc.resolved_ffn_hidden, mc.context_len)
    check_same_function(m, ref, trainer)
    ref.float()
    o = cfg.optim
    decay = [p for p in ref.parameters() if p.dim() >= 2]
    no_decay = [p for p in ref.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=o.lr, betas=o.betas, eps=o.eps)
    fwd = torch.compile(ref) if compile_ else ref
    if compile_:
        check_compiled(trainer, ref, fwd)
    return trainer, ref, fwd, opt


def check_compiled(trainer, ref: nn.Module, ref_fwd) -> None:
    """The compiled models compute their eager logits (float32, up to reordering inside fused kernels)."""
    b = trainer.task.make_batch(trainer.task.global_batch(0, 12), torch.device("cpu"))
    x = b.inputs["idx"]
    for name, compiled, eager in (("attnlab", trainer.forward_model, trainer.model), ("reference", ref_fwd, ref)):
        got, want = compiled(x).detach(), eager(x).detach()
        err = ((got - want).abs().max() / want.abs().max()).item()
        if err > 1e-4:
            raise SystemExit(f"correctness check FAILED: compiled {name} logits differ from eager by {err:.3g} "
                             "(relative)")
        print(f"correctness: compiled {name} logits equal eager to {err:.1e} (relative to the largest)")


def load_attnlab_weights(m: nn.Module, ref: RefGPT) -> None:
    """Copy attnlab's LM weights into the reference (same shapes, same order of q|k|v and gate|up rows)."""
    with torch.no_grad():
        ref.emb.weight.copy_(m.tok_emb.weight)
        for a, r in zip(m.blocks, ref.blocks):
            r.norm1.weight.copy_(a.attn_norm.weight)
            r.attn.qkv.weight.copy_(a.attn.in_proj.weight)
            r.attn.proj.weight.copy_(a.attn.out_proj.weight)
            r.norm2.weight.copy_(a.mlp_norm.weight)
            r.gate_up.weight.copy_(a.mlp.gate_up.weight)
            r.down.weight.copy_(a.mlp.down.weight)
        ref.norm.weight.copy_(m.norm_f.weight)


def check_same_function(m: nn.Module, ref: RefGPT, trainer) -> None:
    """float64: the reference with attnlab's weights computes attnlab's logits; refuse to time otherwise."""
    import copy

    from attnlab.tasks.lm import lm_loss

    a = copy.deepcopy(m).double()
    r = copy.deepcopy(ref).double()
    r.set_rope_tables(m.config.context_len, m.config.d_model // m.config.n_heads, torch.float64)
    load_attnlab_weights(a, r)
    batch = trainer.task.make_batch(trainer.task.global_batch(0, 12), torch.device("cpu"))
    x, y = batch.inputs["idx"], batch.inputs["targets"]
    la, lr_ = a(x), r(x)
    err = (la - lr_).abs().max().item()
    la_loss, lr_loss = lm_loss(la, y).item(), F.cross_entropy(lr_.reshape(-1, lr_.shape[-1]), y.reshape(-1)).item()
    if err > 1e-10 or abs(la_loss - lr_loss) > 1e-12:
        raise SystemExit(f"correctness check FAILED: max |logits difference| {err:.3g}, losses {la_loss} vs {lr_loss}")
    load_attnlab_weights(m, ref)  # same start for the timed runs
    print(f"correctness: float64 logits equal to {err:.1e}, loss {la_loss:.6f} both")


def ref_step(ref_fwd, ref: nn.Module, opt, task, step: int, batch_size: int, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr
    b = task.make_batch(task.global_batch(step, batch_size), torch.device("cpu"))
    x, y = b.inputs["idx"], b.inputs["targets"]
    logits = ref_fwd(x)
    loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def measure(compile_: bool, args: argparse.Namespace) -> dict:
    """Interleaved timing of both sides (eager or compiled), then a profile of attnlab's step."""
    torch.manual_seed(0)
    trainer, ref, ref_fwd, opt = build(compile_)
    cfg = trainer.config
    bs = cfg.batch_size
    tokens = bs * cfg.model.context_len
    state = {"a": 0, "r": 0}

    def run_attnlab(n: int) -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.thread_time()
        for _ in range(n):
            trainer.step = state["a"] % cfg.steps
            trainer.train_step()
            state["a"] += 1
        return n * tokens / (time.perf_counter() - t0), n * tokens / (time.thread_time() - c0)

    def run_ref(n: int) -> tuple[float, float]:
        from attnlab.train.schedule import lr_at

        o = cfg.optim
        t0, c0 = time.perf_counter(), time.thread_time()
        for _ in range(n):
            s = state["r"] % cfg.steps
            lr = lr_at(s, peak=o.lr, warmup_steps=o.warmup_steps, total_steps=cfg.steps, min_ratio=o.min_lr_ratio)
            ref_step(ref_fwd, ref, opt, trainer.task, s, bs, lr)
            state["r"] += 1
        return n * tokens / (time.perf_counter() - t0), n * tokens / (time.thread_time() - c0)

    label = "compiled" if compile_ else "eager"
    t0 = time.perf_counter()
    run_attnlab(args.warmup)
    run_ref(args.warmup)
    print(f"[{label}] warm-up ({args.warmup} steps each{', with compilation' if compile_ else ''}): "
          f"{time.perf_counter() - t0:.1f} s")
    r = {"a": [], "r": [], "ratio": [], "a_cpu": [], "r_cpu": [], "ratio_cpu": []}  # wall clock, then thread CPU
    for i in range(args.rounds):
        if i % 2 == 0:
            (a, ac), (b, bc) = run_attnlab(args.steps), run_ref(args.steps)
        else:
            (b, bc), (a, ac) = run_ref(args.steps), run_attnlab(args.steps)
        for k, v in (("a", a), ("r", b), ("ratio", a / b), ("a_cpu", ac), ("r_cpu", bc), ("ratio_cpu", ac / bc)):
            r[k].append(v)
        print(f"[{label}] round {i + 1}: attnlab {a:,.0f} tok/s ({ac:,.0f} per CPU s), reference {b:,.0f} tok/s "
              f"({bc:,.0f} per CPU s), ratio {a / b:.3f} (CPU time {ac / bc:.3f})")
    med = {k: statistics.median(v) for k, v in r.items()}
    print(f"[{label}] median: attnlab {med['a']:,.0f} tok/s, reference {med['r']:,.0f} tok/s, attnlab/reference "
          f"{med['ratio']:.3f}; per CPU second: {med['a_cpu']:,.0f} vs {med['r_cpu']:,.0f}, ratio "
          f"{med['ratio_cpu']:.3f}")

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run_attnlab(args.profile_steps)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=48)
    print(table)
    return {"label": label, "rounds": r, "median": med, "profile": table}


def section(res: dict, args: argparse.Namespace) -> list[str]:
    r, m = res["rounds"], res["median"]
    return [
        f"## {res['label']}",
        "",
        "| | tokens/s (median) | per round | tokens per CPU second (median) |",
        "|---|---|---|---|",
        f"| attnlab | {m['a']:,.0f} | {', '.join(f'{x:,.0f}' for x in r['a'])} | {m['a_cpu']:,.0f} |",
        f"| reference GPT | {m['r']:,.0f} | {', '.join(f'{x:,.0f}' for x in r['r'])} | {m['r_cpu']:,.0f} |",
        f"| attnlab / reference | **{m['ratio']:.3f}** | {', '.join(f'{x:.3f}' for x in r['ratio'])} "
        f"| {m['ratio_cpu']:.3f} |",
        "",
        f"Profile of attnlab's step ({res['label']}, {args.profile_steps} steps, `torch.profiler`, top 15 by self CPU "
        "time):",
        "",
        "```",
        res["profile"].rstrip(),
        "```",
        "",
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps per side per round")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--compile", action="store_true", help="also time both models under torch.compile (Inductor)")
    ap.add_argument("--profile-steps", type=int, default=20)
    ap.add_argument("--out", default="benchmarks/results/lm-step-cpu.md", help="Markdown file ('-' for none)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    results = [measure(False, args)]
    if args.compile:
        results.append(measure(True, args))
    load_after = os.getloadavg()
    if args.out == "-":
        return 0
    from attnlab.bench.report import machine_info

    info = machine_info()
    info["load average (1/5/15 min)"] = (" / ".join(f"{x:.1f}" for x in load_before) + " before, "
                                         + " / ".join(f"{x:.1f}" for x in load_after) + " after")
    cmd = "python " + " ".join([sys.argv[0], *sys.argv[1:]])
    lines = [
        "# LM training step on CPU: attnlab vs a minimal GPT of the same architecture",
        "",
        f"- command: `{cmd}`",
        f"- date: {dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()}",
        *(f"- {k}: {v}" for k, v in info.items()),
        "",
        "Setting: preset `shakespeare-char-cpu` (4 layers, 4 heads, d_model 128, context 64, batch 12, vocabulary 65,",
        "float32, AdamW, clip 1.0), one thread. A step is a whole optimizer step: batch, forward, loss, backward,",
        "clip, AdamW. attnlab runs `Trainer.train_step()`; the reference is the minimal GPT in `benchmarks/lm_step.py`",
        "(the same function: its float64 logits with attnlab's weights equal attnlab's, checked before timing;",
        "compiled logits equal eager ones within 1e-4). "
        f"{args.rounds} interleaved rounds of {args.steps} steps of each after {args.warmup} warm-up steps;",
        "the ratio is the median of the per-round ratios. Tokens per CPU second divide by this thread's CPU time",
        "(`time.thread_time()`), which leaves out the time the thread waited for a core: on a shared machine they",
        "show the cost of the code itself.",
        "",
    ]
    for res in results:
        lines += section(res, args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
