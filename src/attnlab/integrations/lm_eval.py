"""lm-evaluation-harness adapter: ``lm_eval --model attnlab --model_args checkpoint=runs/x --tasks ...``.

:class:`AttnlabEvalLM` is registered with lm-eval as ``"attnlab"`` when this module is imported, and the package
declares it as the ``attnlab`` entry point of the ``lm_eval.models`` group (pyproject.toml). An lm-eval release with
entry-point plugins (upstream PR #4013, after 0.4.13) finds it there, so its own ``lm_eval --model attnlab`` command
works directly. lm-eval 0.4.13 and older have no plugin discovery and their ``lm_eval`` command cannot see it: run
the same command line through ``python -m attnlab.integrations.lm_eval`` (lm-eval's CLI with attnlab registered),
or ``attnlab eval --harness TASKS``, or call ``lm_eval.simple_evaluate(model="attnlab", ...)`` after importing this
module.

Model arguments: ``checkpoint`` (a checkpoint or run directory of an attnlab language model, required), ``device``
(default ``cpu``; lm-eval's command line passes ``cuda:0`` unless told otherwise, so on a machine without CUDA a
``cuda`` device falls back to the CPU and says so on stderr), ``batch_size`` (rows per forward pass for the
log-likelihoods, default 8).

* ``loglikelihood``: each (context, continuation) pair is encoded with the checkpoint's own tokenizer as
  ``context + continuation``, cut from the left to the model's context length; the log-probability of the
  continuation tokens and whether greedy decoding gives them. Requests are sorted by length and run in batches,
  right-padded (every mechanism is causal, so padding after a row's tokens cannot change them).
* ``loglikelihood_rolling``: the sum over a text's tokens 2..n of the log-probability of each token, in windows of
  the context length (attnlab's tokenizers have no beginning-of-text token, so the first token is not scored).
* ``generate_until``: greedy decoding with the mechanism's own cache, ``max_gen_toks`` tokens (default 256), cut
  at the first ``until`` string.

Needs ``pip install 'attnlab[eval]'`` (``lm-eval``). A context the tokenizer cannot encode (e.g. a character outside
a character model's vocabulary) is a ``ValueError`` naming the request.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

__all__ = ["AttnlabEvalLM", "main"]


@register_model("attnlab")
class AttnlabEvalLM(LM):
    """An attnlab checkpoint as an lm-eval model (module docstring)."""

    def __init__(self, checkpoint: str | None = None, device: str | None = None, batch_size: int | str | None = None,
                 max_batch_size: int | None = None, **unknown: Any) -> None:
        super().__init__()
        if unknown:
            raise ValueError(f"unknown model_args for attnlab: {', '.join(sorted(unknown))} (it takes checkpoint, "
                             "device, batch_size)")
        if not checkpoint:
            raise ValueError("model_args must name the checkpoint: --model_args checkpoint=runs/x")
        from attnlab.train.loading import load_trained

        if device and device.startswith("cuda") and not torch.cuda.is_available():
            # lm-eval's command line passes device=cuda:0 unless told otherwise
            print(f"attnlab: device={device} but CUDA is not available here; evaluating on the CPU", file=sys.stderr)
            device = "cpu"
        self._trained = load_trained(checkpoint, device=device or "cpu", task="lm")
        self.model = self._trained.model.eval()
        self.tokenizer = self._trained.task.tokenizer
        if self.tokenizer is None:
            raise ValueError(f"checkpoint {checkpoint} holds no tokenizer")
        self.context_len = int(self.model.config.context_len)
        bs = 8 if batch_size is None or str(batch_size).startswith("auto") else int(batch_size)  # (auto, auto:N)
        if bs < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        self.batch_size = bs
        self._device = next(self.model.parameters()).device

    # ------------------------------------------------------------------------------------------- encoding
    def _encode(self, text: str, what: str) -> list[int]:
        try:
            return list(self.tokenizer.encode(text))
        except ValueError as e:
            raise ValueError(f"{what}: the checkpoint's tokenizer cannot encode {text[:60]!r}: {e}") from None

    @torch.no_grad()
    def _scores(self, rows: list[list[int]], targets: list[list[int]]) -> list[tuple[float, bool]]:
        """For each input row (at most ``context_len`` tokens) and its ``targets`` (the tokens its last
        ``len(targets)`` positions predict): the summed log-probability of the targets and whether greedy decoding
        gives them. Rows run in batches of ``batch_size``, right-padded; only the targets' log-probabilities are
        kept, so memory stays one batch's logits whatever the number of requests."""
        out: list[tuple[float, bool]] = []
        for lo in range(0, len(rows), self.batch_size):
            chunk, tgts = rows[lo : lo + self.batch_size], targets[lo : lo + self.batch_size]
            T = max(len(r) for r in chunk)
            idx = torch.zeros(len(chunk), T, dtype=torch.long)
            for i, r in enumerate(chunk):
                idx[i, : len(r)] = torch.tensor(r)
            logits = self.model(idx.to(self._device))  # (B, T, V)
            for i, (r, tg) in enumerate(zip(chunk, tgts)):
                lp = F.log_softmax(logits[i, len(r) - len(tg) : len(r)].double(), dim=-1).cpu()  # (n, V)
                t = torch.tensor(tg)
                out.append((float(lp.gather(1, t[:, None]).sum()), bool((lp.argmax(-1) == t).all())))
        return out

    # ------------------------------------------------------------------------------------------- requests
    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        rows, conts = [], []
        for k, req in enumerate(requests):
            context, continuation = req.args
            spaces = len(context) - len(context.rstrip())  # lm-eval's convention: trailing spaces of the context
            if spaces:                                      # belong to the continuation
                context, continuation = context[:-spaces], context[-spaces:] + continuation
            ctx = self._encode(context, f"request {k} (context)")
            whole = self._encode(context + continuation, f"request {k} (continuation)")
            cont = whole[len(ctx):] if whole[: len(ctx)] == ctx else self._encode(continuation, f"request {k}")
            if not ctx:
                raise ValueError(f"request {k}: an empty context cannot be scored (attnlab's tokenizers have no "
                                 "beginning-of-text token)")
            if not cont:
                raise ValueError(f"request {k}: the continuation {continuation!r} encodes to no tokens")
            if len(cont) > self.context_len:
                raise ValueError(f"request {k}: the continuation has {len(cont)} tokens, the model's context is "
                                 f"{self.context_len}")
            rows.append((ctx + cont)[-(self.context_len + 1):-1])  # the input: at most context_len tokens
            conts.append(cont)
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))  # similar lengths share a batch
        scored = self._scores([rows[i] for i in order], [conts[i] for i in order])
        results: list[tuple[float, bool]] = [(0.0, False)] * len(rows)
        for j, i in enumerate(order):
            results[i] = scored[j]
        return results

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        out = []
        L = self.context_len
        for k, req in enumerate(requests):
            ids = self._encode(req.args[0], f"request {k}")
            total, a, n = 0.0, 1, len(ids)
            while a < n:  # score tokens a..b-1 from the input ids[st : b - 1] (at most L tokens)
                b = min(n, a + L)
                st = max(0, b - 1 - L)
                total += self._scores([ids[st : b - 1]], [ids[a:b]])[0][0]
                a = b
            out.append(total)
        return out

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        from attnlab.models.lm import generate

        out = []
        for k, req in enumerate(requests):
            context, kwargs = req.args
            kwargs = dict(kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.pop("max_gen_toks", 256))
            ids = self._encode(context, f"request {k}")[-(self.context_len - 1):] if context else []
            if not ids:
                raise ValueError(f"request {k}: an empty context cannot start generation")
            max_new = max(0, min(max_new, self.context_len - len(ids)))
            full = generate(self.model, ids, max_new, temperature=0.0)
            text = self.tokenizer.decode(full[len(ids):].tolist())
            cut = min([text.find(u) for u in until if u and u in text], default=len(text))
            out.append(text[:cut])
        return out


def main(argv: list[str] | None = None) -> int:
    """lm-eval's command line with ``attnlab`` registered: ``python -m attnlab.integrations.lm_eval --model attnlab
    --model_args checkpoint=runs/x --tasks hellaswag``."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
