"""Greedy decoding of an encoder-decoder, cached against recomputed, timed in one process.

    .venv/bin/python benchmarks/encdec_decode.py [--tokens 30] [--batch 32] [--repeats 7] [--decoder standard]

Both paths decode the same batch to exactly ``--tokens`` tokens (the eos embedding row is zeroed, so eos is never the
argmax: its logit is 0 while every other row's is random). ``use_cache=True`` projects the source into the cross-
attention keys and values once and feeds one token per step through each layer's cache; ``use_cache=False``
re-runs the decoder (and the cross-attention projections) over the whole prefix at every step. The script first
checks that both give the same tokens (a failed check is reported instead of a speed), then reports the median of
``--repeats`` timed runs after one warm-up run of each, and their ratio.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from attnlab.models.encdec import EncDecConfig, greedy_decode

BOS, EOS, PAD = 1, 2, 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=30, help="output tokens per sentence")
    ap.add_argument("--repeats", type=int, default=7, help="timed runs of each path (median reported)")
    ap.add_argument("--batch", type=int, default=32, help="sentences decoded together (a translation batch)")
    ap.add_argument("--source-len", type=int, default=32, help="source tokens per sentence")
    ap.add_argument("--decoder", default="standard", help="the decoder's self-attention mechanism")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: steadier on a busy machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = EncDecConfig(vocab_size=1000, d_model=256, n_heads=4, n_encoder_layers=3, n_decoder_layers=3,
                       decoder_attention=args.decoder, max_source_len=args.source_len,
                       max_target_len=max(args.tokens, 1))
    model = cfg.build().eval()
    with torch.no_grad():
        model.tok_emb.weight[EOS] = 0.0
    src = torch.randint(3, 1000, (args.batch, args.source_len))

    def run(use_cache: bool) -> list[list[int]]:
        return greedy_decode(model, src, max_len=args.tokens, bos_id=BOS, eos_id=EOS, use_cache=use_cache)

    cached, recomputed = run(True), run(False)  # warm-up, and the correctness check
    if cached != recomputed or any(len(h) != args.tokens for h in cached):
        print("FAILED: cached and recomputed greedy decoding disagree (or did not reach --tokens); no timing reported")
        raise SystemExit(1)
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.repeats):
        for use_cache in (True, False):  # interleaved, so that machine noise hits both alike
            t0 = time.perf_counter()
            run(use_cache)
            times[use_cache].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"machine: {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    print(f"model: d_model=256, 3+3 layers, decoder={args.decoder}, vocab=1000, float32; batch {args.batch}, "
          f"source {args.source_len} tokens, {args.tokens} output tokens; median of {args.repeats}")
    print(f"cached:     {med[True] * 1e3:8.1f} ms")
    print(f"recomputed: {med[False] * 1e3:8.1f} ms")
    print(f"ratio recomputed / cached: {med[False] / med[True]:.2f}x")


if __name__ == "__main__":
    main()
