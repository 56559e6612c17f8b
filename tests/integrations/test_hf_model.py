"""AttnlabForCausalLM: any attnlab LM inside transformers. Logits equal attnlab's (float32, 1e-5), greedy
``generate()`` gives attnlab's tokens with each mechanism's own cache (prefill once, then one token per call),
save/load through AutoModelForCausalLM, and the export command picks the class."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is not installed (attnlab[hf], dev extra)")

import attnlab.integrations.hf  # noqa: E402,F401  (registers the Auto classes)
from attnlab.cli import main  # noqa: E402
from attnlab.integrations.hf_model import AttnlabForCausalLM, lm_to_hf  # noqa: E402
from attnlab.models.lm import LMConfig, generate  # noqa: E402

MECHANISMS = ["standard", "castle", "linear", "sliding-window", "decon_rndembqk", "decon_nonapprox"]


def _lm(attention: str):
    torch.manual_seed(0)
    opts = {"sliding-window": {"window": 5}} if attention == "sliding-window" else {}
    return LMConfig(vocab_size=37, n_layers=2, d_model=32, n_heads=4, context_len=48, attention=attention,
                    attention_options=opts).build().eval()


@pytest.mark.parametrize("attention", MECHANISMS)
def test_logits_generation_and_reload(attention: str, tmp_path: Path) -> None:
    lm = _lm(attention)
    hf = lm_to_hf(lm)
    idx = torch.randint(0, 37, (2, 20), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(hf(input_ids=idx).logits, lm(idx), atol=1e-5, rtol=0)
    prompt = torch.tensor([[3, 14, 15, 9, 2, 6]])
    want = generate(lm, prompt, 12, temperature=0.0)
    seen: list[int] = []
    hook = hf.lm.register_forward_pre_hook(lambda m, args, kw: seen.append(int(args[0].shape[1])), with_kwargs=True)
    got = hf.generate(input_ids=prompt, max_new_tokens=12, do_sample=False, pad_token_id=0)
    hook.remove()
    assert got.tolist() == want.tolist()
    assert seen == [6] + [1] * 11  # the mechanism's cache: a prefill, then one new token per call
    nocache = hf.generate(input_ids=prompt, max_new_tokens=12, do_sample=False, pad_token_id=0, use_cache=False)
    assert nocache.tolist() == want.tolist()
    hf.save_pretrained(tmp_path / "m")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    assert isinstance(back, AttnlabForCausalLM) and back.lm.mechanisms == lm.mechanisms
    torch.testing.assert_close(back(input_ids=idx).logits, lm(idx), atol=1e-5, rtol=0)


def test_loss_and_refusals() -> None:
    lm = _lm("standard")
    hf = lm_to_hf(lm)
    idx = torch.randint(0, 37, (2, 10), generator=torch.Generator().manual_seed(2))
    logits = lm(idx)
    want = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 37), idx[:, 1:].reshape(-1))
    torch.testing.assert_close(hf(input_ids=idx, labels=idx).loss, want)
    mask = torch.ones_like(idx)
    mask[0, 0] = 0
    with pytest.raises(ValueError, match="attention_mask has zeros: padded batches are not supported"):
        hf(input_ids=idx, attention_mask=mask)
    with pytest.raises(ValueError, match="attention"):
        transformers.AutoConfig.for_model("attnlab", lm_config={**lm.config.to_dict(), "attention": "nope"})


def test_export_picks_llama_or_attnlab(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hf_tiny import train_tiny_char_lm

    run = train_tiny_char_lm(tmp_path, layers=2, attention="castle")
    assert main(["export", "--checkpoint", str(run), "--as", "llama", "--out", str(tmp_path / "l")]) == 2
    assert "cannot be exported as a Llama" in capsys.readouterr().err and not (tmp_path / "l").exists()
    assert main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "a")]) == 0
    assert "AttnlabForCausalLM" in capsys.readouterr().out
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "a").eval()
    from attnlab.train.loading import load_trained

    lm = load_trained(run, device="cpu").model
    idx = torch.randint(0, lm.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(back(input_ids=idx).logits, lm(idx), atol=1e-5, rtol=0)


def test_beam_search_is_refused() -> None:
    hf = lm_to_hf(_lm("standard"))
    with pytest.raises(ValueError, match="num_beams=2: beam search is not supported"):
        hf.generate(input_ids=torch.tensor([[1, 2, 3]]), max_new_tokens=3, num_beams=2, pad_token_id=0)
