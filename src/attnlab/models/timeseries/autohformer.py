"""AutoHFormer (Zhang et al., arXiv 2506.16001) in the buildable reading of spec ``time_series.md`` C.6.

Shape legend: B batch, L look-back, T horizon, V channels, C ``d_model``, H heads, D head dim, P positions,
S segment length (``segment_len``), K segments (``T / S``), R window keys (``window / 2 + 1``).

    tokens u_p = W_in z_p: z_p = x_p for p < L, the horizon value ŷ_{p-L} (or y_{p-L}) after     (B, P, C)
    n_layers x [ u + Attn(RMSNorm(u)),  u + SwiGLU(RMSNorm(u)) ] -> RMSNorm -> f                (B, P, C)
        Attn: windowed causal attention (step p sees p - window/2 .. p), exponential decay as a score
        modification and relative sinusoidal keys (:func:`attnlab.ops.decayed.decayed_window_attention`)
    horizon step s (0-based) of segment h = s // S, t = s % S, previous state f_{L-1+s}:
        c_h = F_θ(f_{L-R+hS .. L-1+hS})  (S, V)   coarse guess from the states segment h may see
        ŷ_s = c_h[t] + W_o f_{L-1+s}              step-wise correction
    F_θ, ``segment_init="linear"``: a linear map of the last visible state f_{L-1+hS} alone;
         ``"block_transformer"``: S learned queries cross-attend (multi-head) to the last R visible states, then
         a linear map to the V channels (spec C.6 item 3's second reading)

Training (``train_mode="teacher_forcing"``): one parallel pass over ``[x; y_{0..T-2}]`` gives every ``f`` at once
(:meth:`AutoHFormer.teacher_forced`). ``"scheduled"``: scheduled sampling (Bengio et al., NeurIPS 2015) in the
two-pass parallel form of Mihaylova and Martins (ACL SRW 2019): a gradient-free teacher-forced pass predicts every
step, then a second teacher-forced pass is fed, step by step at random, those predictions or the truth
(:meth:`AutoHFormer.scheduled`). ``"free_running"``: the decoding loop below, differentiated. Inference:
:meth:`AutoHFormer.decode`, a prefill over the look-back, then one step at a time, feeding each prediction back,
with a :class:`~attnlab.cache.SlidingKVCache` of ``R`` keys per layer; ``c_h`` is computed once per segment. The
parallel pass and the loop give the same numbers when the loop is fed the truth (tested in float64).

Choices of this reading (reconstruction, not stated in the paper; see spec C.5/C.6): the blocks are attnlab's shared
pre-norm :class:`~attnlab.models.common.ResidualBlock` (RMSNorm, SwiGLU of width ``ffn_hidden``) rather than the
post-norm LayerNorm blocks of C.6 item 2; ``F_θ`` is linear by default; the block-transformer ``F_θ`` sees the last
``R = window / 2 + 1`` states (the span of one attention layer), so that decoding keeps ``O(window)`` states; time
features are not used (the forecasting task's ``forecast()`` has none for the horizon).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.cache import SlidingKVCache
from attnlab.models.common import RMSNorm, ResidualBlock, gpt2_init_
from attnlab.models.timeseries._checks import check_window
from attnlab.models.timeseries.config import AutoHFormerConfig
from attnlab.models.timeseries.instance_norm import WindowScale
from attnlab.ops.decayed import decayed_window_attention, relative_table, sinusoidal_offsets

__all__ = ["AutoHFormer", "DecayedWindowAttention", "SegmentQueries"]


class DecayedWindowAttention(nn.Module):
    """Multi-head windowed decayed attention over time steps: ``forward(x (B, P, C), cache=None) -> (B, P, C)``.

    ``gamma = softplus(gamma_raw)`` (> 0; the release uses a raw parameter), one scalar shared by the heads as in
    Algorithm 1; ``decay="none"`` has no parameter and ``gamma = 0``. The relative table ``r_d`` (``d = 0 .. R-1``)
    is a fixed sinusoid in the head dim, added to the keys: ``q . (k + r_d) = q . k + q . r_d``. With a
    :class:`~attnlab.cache.SlidingKVCache` the new steps attend to the kept keys and themselves.
    """

    def __init__(self, config: AutoHFormerConfig) -> None:
        super().__init__()
        self.config = config
        H, D = config.n_heads, config.resolved_head_dim
        self.n_heads, self.head_dim, self.lookback = H, D, config.lookback
        self.qkv = nn.Linear(config.d_model, 3 * H * D, bias=False)
        self.out_proj = nn.Linear(H * D, config.d_model, bias=False)
        self.gamma_raw = None
        if config.decay != "none":
            raw = config.gamma_init + math.log(-math.expm1(-config.gamma_init))  # softplus^-1(gamma_init)
            self.gamma_raw = nn.Parameter(torch.tensor(raw))
        offsets = sinusoidal_offsets(self.lookback + 1, D) if config.relative else torch.empty(0, D)
        self.register_buffer("offsets", offsets, persistent=False)  # (R, D) or (0, D)

    @property
    def gamma(self) -> Tensor:
        """The decay rate (0-dim, > 0; exactly 0 with ``decay="none"``)."""
        if self.gamma_raw is None:
            return torch.zeros((), dtype=self.qkv.weight.dtype, device=self.qkv.weight.device)
        return F.softplus(self.gamma_raw)

    def forward(self, x: Tensor, cache: SlidingKVCache | None = None) -> Tensor:
        B, P, _ = x.shape
        H, D = self.n_heads, self.head_dim
        q, k, v = self.qkv(x).view(B, P, 3, H, D).permute(2, 0, 3, 1, 4)  # (B, H, P, D) each
        q_offset = kv_start = 0
        if cache is not None:
            q_offset = cache.seq_len
            k, v, kv_start = cache.update(k, v)  # (B, H, kept + P, D): the keys the new steps may see
        scale = 1.0 / math.sqrt(D)
        rel = relative_table(q, self.offsets, scale) if self.config.relative else None  # (B, H, P, R)
        o = decayed_window_attention(q, k, v, lookback=self.lookback, decay=self.config.decay, gamma=self.gamma,
                                     rel=rel, scale=scale, q_offset=q_offset, kv_start=kv_start,
                                     impl=self.config.impl)  # (B, H, P, D)
        return self.out_proj(o.transpose(1, 2).reshape(B, P, H * D))  # (B, P, C)


class SegmentQueries(nn.Module):
    """The block-transformer segment initialiser: ``forward(context (N, R, C), valid (N, R) bool) -> (N, S V)``.

    ``S`` learned queries (one per step of the segment) attend, with ``n_heads`` heads, to the visible top-layer
    states ``context`` (``valid`` marks real states; the left padding of a context shorter than ``R`` is masked
    out), then a linear map turns each query's output into the step's ``V`` channels. The last state is always
    valid, so no query row is empty.
    """

    def __init__(self, config: AutoHFormerConfig, n_channels: int) -> None:
        super().__init__()
        H, D, C, S = config.n_heads, config.resolved_head_dim, config.d_model, config.segment_len
        self.n_heads, self.head_dim, self.segment_len = H, D, S
        self.queries = nn.Parameter(torch.empty(S, C))  # (S, C), N(0, 0.02) with the rest of the model
        self.q = nn.Linear(C, H * D, bias=False)
        self.kv = nn.Linear(C, 2 * H * D, bias=False)
        self.out = nn.Linear(H * D, n_channels)

    def forward(self, context: Tensor, valid: Tensor) -> Tensor:
        N, R, _ = context.shape
        H, D, S = self.n_heads, self.head_dim, self.segment_len
        q = self.q(self.queries).view(1, S, H, D).transpose(1, 2).expand(N, H, S, D)  # (N, H, S, D)
        k, v = self.kv(context).view(N, R, 2, H, D).permute(2, 0, 3, 1, 4)  # (N, H, R, D) each
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, None, :])  # (N, H, S, D)
        return self.out(o.transpose(1, 2).reshape(N, S, H * D)).reshape(N, -1)  # (N, S V)


class AutoHFormer(nn.Module):
    """See the module docstring. ``forward(x (B, L, V), x_marks=None, target=None) -> (B, T, V)``: teacher-forced
    (or scheduled sampling) when training with ``train_mode="teacher_forcing"`` (``"scheduled"``) and a ``target
    (B, T, V)``; the decoding loop otherwise. With ``instance_norm`` the window (and the target) are standardised by
    the look-back's statistics first and the forecast is mapped back."""

    def __init__(self, config: AutoHFormerConfig, *, look_back: int, horizon: int, n_channels: int,
                 n_time_features: int = 0) -> None:
        super().__init__()
        if not isinstance(config, AutoHFormerConfig):
            raise ValueError(f"config must be an AutoHFormerConfig, got {type(config).__name__}")
        config.check_sizes(look_back=look_back, horizon=horizon)
        self.config = config
        self.look_back, self.horizon, self.n_channels = look_back, horizon, n_channels
        C, S = config.d_model, config.segment_len
        self.in_proj = nn.Linear(n_channels, C)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            ResidualBlock(d_model=C, attn=DecayedWindowAttention(config), ffn_hidden=config.ffn_hidden,
                          dropout=config.dropout, norm_eps=config.norm_eps, mechanism="autohformer")
            for _ in range(config.n_layers)
        )
        self.norm_f = RMSNorm(C, eps=config.norm_eps)
        self.segment_head: nn.Module  # F_θ: visible states -> coarse guess (S V,)
        if config.segment_init == "linear":
            self.segment_head = nn.Linear(C, S * n_channels)  # the last visible state only
        else:
            self.segment_head = SegmentQueries(config, n_channels)
        self.step_head = nn.Linear(C, n_channels)  # W_o: previous state -> correction (V,)
        gpt2_init_(self, list(self.blocks), d_model=C, embeddings=[])
        if isinstance(self.segment_head, SegmentQueries):
            nn.init.normal_(self.segment_head.queries, mean=0.0, std=0.02)
        if config.train_mode == "scheduled":  # training forward calls so far: the schedule's clock, saved and resumed
            self.register_buffer("scheduled_calls", torch.zeros((), dtype=torch.int64))

    @property
    def uses_target(self) -> bool:
        """``True`` when training needs the target in the call (teacher forcing, scheduled sampling)."""
        return self.config.train_mode in ("teacher_forcing", "scheduled")

    @property
    def context_len(self) -> int:
        """States a segment's coarse guess sees: ``window / 2 + 1`` (block transformer) or 1 (linear)."""
        return self.config.lookback + 1 if self.config.segment_init == "block_transformer" else 1

    def hidden(self, z: Tensor, caches: list[SlidingKVCache] | None = None) -> Tensor:
        """The top-layer states ``f (B, P, C)`` of the steps ``z (B, P, V)`` (after the cached ones, if any);
        ``f_p`` depends on ``z_{p - n_layers * window/2 .. p}`` only."""
        u = self.drop(self.in_proj(z))  # (B, P, C)
        for i, block in enumerate(self.blocks):
            u = block(u, None if caches is None else caches[i])  # (B, P, C)
        return self.norm_f(u)

    def _segment_guess(self, context: Tensor) -> Tensor:
        """``c_h (N, S, V)`` from the visible states ``context (N, R', C)``, oldest first, the last one the state
        before the segment (``R' <= context_len``; a shorter context is left-padded and the padding masked out).
        A 2-d ``(N, C)`` is the last state alone."""
        if context.ndim == 2:
            context = context[:, None]
        N, S = context.shape[0], self.config.segment_len
        if isinstance(self.segment_head, nn.Linear):
            return self.segment_head(context[:, -1]).view(N, S, self.n_channels)
        R, have = self.context_len, min(context.shape[1], self.context_len)
        valid = torch.arange(R, device=context.device) >= R - have  # (R,)
        padded = F.pad(context[:, -have:], (0, 0, R - have, 0))  # (N, R, C)
        return self.segment_head(padded, valid.expand(N, R)).view(N, S, self.n_channels)

    def teacher_forced(self, x: Tensor, y: Tensor) -> Tensor:
        """The forecast ``(B, T, V)`` of one parallel pass over ``[x; y_{0..T-2}]`` (step ``s`` is predicted from
        the values fed before it, here the truth)."""
        B, L, T, S = x.shape[0], x.shape[1], self.horizon, self.config.segment_len
        f = self.hidden(torch.cat([x, y[:, :-1]], dim=1))  # (B, L + T - 1, C)
        prev = f[:, L - 1:]  # (B, T, C): the state before each horizon step
        C, R = f.shape[-1], self.context_len
        if R == 1:
            context = prev[:, ::S].reshape(-1, 1, C)  # (B K, 1, C)
            guess = self._segment_guess(context)
        else:  # the R states ending at each segment's last visible step L - 1 + hS, left-padded before step 0
            windows = F.pad(f, (0, 0, R - 1, 0)).unfold(1, R, 1)  # (B, L + T - 1, C, R): window ending at p
            context = windows[:, L - 1::S].transpose(-1, -2).reshape(-1, R, C)  # (B K, R, C)
            ends = torch.arange(L - 1, L - 1 + T, S, device=f.device)  # (K,)
            valid = torch.arange(R, device=f.device) >= (R - 1 - ends)[:, None]  # (K, R): not padding
            guess = self.segment_head(context, valid.repeat(B, 1)).view(-1, S, self.n_channels)  # (B K, S, V)
        return guess.view(B, T, self.n_channels) + self.step_head(prev)  # (B, T, V)

    def scheduled_prob(self) -> float:
        """The probability of feeding a prediction at the current training call (``train_mode="scheduled"``)."""
        c = self.config
        if c.scheduled_ramp == 0:
            return c.scheduled_prob
        return c.scheduled_prob * min(1.0, int(self.scheduled_calls) / c.scheduled_ramp)

    def scheduled(self, x: Tensor, y: Tensor) -> Tensor:
        """Scheduled sampling in two parallel passes: the forecast ``(B, T, V)`` of :meth:`teacher_forced` fed, at
        each horizon step independently, the first pass's prediction (probability :meth:`scheduled_prob`, no
        gradient through it) or the truth. Advances the schedule's clock by one call."""
        p = self.scheduled_prob()
        self.scheduled_calls += 1
        if p == 0.0:
            return self.teacher_forced(x, y)
        with torch.no_grad():
            guess = self.teacher_forced(x, y)  # (B, T, V): each step predicted from the truth before it
        pick = torch.rand(y.shape[0], y.shape[1], 1, device=y.device) < p  # (B, T, 1): whole steps
        return self.teacher_forced(x, torch.where(pick, guess, y))

    def new_caches(self, batch_size: int, *, device: torch.device, dtype: torch.dtype) -> list[SlidingKVCache]:
        """One sliding key/value cache of ``window / 2 + 1`` steps per layer."""
        c = self.config
        return [SlidingKVCache(c.lookback + 1, batch_size, c.n_heads, c.resolved_head_dim, device=device,
                               dtype=dtype) for _ in self.blocks]

    def decode(self, x: Tensor, feed: Tensor | None = None) -> Tensor:
        """The forecast ``(B, T, V)`` step by step: prefill over ``x``, then each step fed back (``feed (B, T, V)``:
        feed those values instead, e.g. the truth, to compare with :meth:`teacher_forced`)."""
        caches = self.new_caches(x.shape[0], device=x.device, dtype=x.dtype)
        R = self.context_len
        states = self.hidden(x, caches)[:, -R:]  # (B, <= R, C): the last visible states, oldest first
        S, out = self.config.segment_len, []
        guess = x.new_empty(0)
        for s in range(self.horizon):
            f = states[:, -1]  # (B, C)
            if s % S == 0:
                guess = self._segment_guess(states)  # (B, S, V): sees nothing of segment s // S
            y_s = guess[:, s % S] + self.step_head(f)  # (B, V)
            out.append(y_s)
            if s + 1 < self.horizon:
                z = feed[:, s] if feed is not None else y_s
                states = torch.cat([states, self.hidden(z[:, None], caches)], dim=1)[:, -R:]  # (B, <= R, C)
        return torch.stack(out, dim=1)  # (B, T, V)

    def forward(self, x: Tensor, x_marks: Tensor | None = None, target: Tensor | None = None) -> Tensor:
        check_window(x, look_back=self.look_back, n_channels=self.n_channels)
        scale = WindowScale.of(x) if self.config.instance_norm else None
        z = scale.normalise(x) if scale is not None else x  # (B, L, V): the model's own scale
        if target is not None and self.training and self.uses_target:
            want = (x.shape[0], self.horizon, self.n_channels)
            if not isinstance(target, Tensor) or tuple(target.shape) != want:
                got = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
                raise ValueError(f"target must have shape (B, T, V) = {want}, got {got}")
            y = target.to(x.dtype)
            y = scale.normalise(y) if scale is not None else y
            out = self.scheduled(z, y) if self.config.train_mode == "scheduled" else self.teacher_forced(z, y)
        else:
            out = self.decode(z)
        return scale.restore(out) if scale is not None else out


AutoHFormerConfig.model_class = AutoHFormer
