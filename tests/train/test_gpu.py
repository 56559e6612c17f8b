"""GPU tier (skipped without CUDA): bf16 autocast training, torch.compile, cached generation on the device."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from attnlab.models.lm import LMConfig
from attnlab.train.config import OptimConfig, TrainConfig
from attnlab.train.trainer import Trainer

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("compile_model", [False, True])
def test_bf16_training_on_cuda(tmp_path: Path, compile_model: bool) -> None:
    cfg = TrainConfig(model=LMConfig(n_layers=2, d_model=64, n_heads=4, context_len=64, attention="castle"),
                      optim=OptimConfig(lr=3e-3, warmup_steps=5), steps=40, batch_size=16, eval_interval=20,
                      device="cuda", precision="auto", compile=compile_model, progress=False, tensorboard=False)
    t = Trainer(cfg, out_dir=tmp_path, log=None)
    assert t.autocast_dtype == torch.bfloat16 and t.device.type == "cuda"
    r = t.fit()
    assert math.isfinite(r.val.loss) and r.val.loss < math.log(65)  # learned something beyond uniform
    assert r.memory_kind == "cuda-allocated" and r.peak_memory_bytes > 0
    # resume on the device continues from the checkpoint
    t2 = Trainer(cfg.replace(steps=45), out_dir=tmp_path, resume=True, log=None)
    assert t2.step == 40
    assert t2.fit().steps == 45


@pytest.mark.parametrize("name", ["standard", "castle", "sliding-window", "linear"])
def test_cached_generation_on_cuda(name: str) -> None:
    from attnlab.models import LM, LMConfig
    from attnlab.models.lm import generate_with_logits

    torch.manual_seed(0)
    model = LM(LMConfig(vocab_size=33, n_layers=2, d_model=64, n_heads=4, context_len=24, attention=name))
    model = model.to("cuda", torch.float64)  # float64 on the device: exact comparison, as on CPU
    prompt = torch.randint(33, (2, 6))
    from attnlab.ops.softmax.flex import record_flex_fallbacks

    # float64 FlexAttention (sliding-window) runs uncompiled on CUDA by design (H200 run: Triton's tl.dot assertion)
    with record_flex_fallbacks() as taken:
        a, la = generate_with_logits(model, prompt, 24, temperature=0.0, use_cache=True)
        b, lb = generate_with_logits(model, prompt, 24, temperature=0.0, use_cache=False)
    if taken:
        print(f"[flex] {name}: {len(taken)} call(s) uncompiled: " + " | ".join(sorted(set(taken))))
    assert torch.equal(a, b)
    for x, y in zip(la, lb):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-9)
