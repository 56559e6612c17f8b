"""attnlab LM -> transformers LlamaForCausalLM (``attnlab export --format hf``): logits equal attnlab's within 1e-5
in float32, greedy generation gives attnlab's tokens, the directory loads with AutoModelForCausalLM, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is not installed (attnlab[hf], dev extra)")

from attnlab.cli import main  # noqa: E402
from attnlab.integrations.hf_export import check_llama_compatible, lm_to_llama  # noqa: E402
from attnlab.models.lm import LMConfig, generate  # noqa: E402

CASES = {
    "standard": dict(attention="standard"),
    "gqa": dict(attention="gqa", attention_options={"gqa": {"n_kv_heads": 2}}),
    "mqa": dict(attention="mqa"),
    "untied-headdim": dict(attention="standard", tie_embeddings=False, head_dim=12, rope_base=500.0),
}


def _lm(**kw):
    torch.manual_seed(0)
    base = dict(vocab_size=37, n_layers=2, d_model=32, n_heads=4, context_len=48)
    lm = LMConfig(**{**base, **kw}).build().eval()
    with torch.no_grad():  # non-trivial norms (they start at 1)
        for n, p in lm.named_parameters():
            if "norm" in n:
                p.add_(0.1 * torch.randn_like(p))
    return lm


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("case", list(CASES))
def test_llama_logits_equal_attnlab(case: str, impl: str) -> None:
    lm = _lm(**CASES[case])
    hf = lm_to_llama(lm, attn_implementation=impl)
    idx = torch.randint(0, 37, (3, 41), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = lm(idx)
        got = hf(input_ids=idx).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert sum(p.numel() for p in hf.parameters()) == sum(p.numel() for p in lm.parameters())


def test_greedy_generation_gives_attnlab_tokens() -> None:
    lm = _lm()
    hf = lm_to_llama(lm)
    prompt = torch.tensor([[3, 14, 15, 9, 2, 6]])
    want = generate(lm, prompt, 20, temperature=0.0)
    got = hf.generate(input_ids=prompt, max_new_tokens=20, do_sample=False, attention_mask=torch.ones_like(prompt),
                      pad_token_id=0)
    assert got.tolist() == want.tolist()


@pytest.mark.parametrize("attention, why", [
    ("sliding-window", "mask is"), ("linear", "no Llama form"), ("castle", "no Llama form"),
    ("luong-general", "score is 'general'"),
])
def test_mechanisms_without_a_llama_form_are_refused(attention: str, why: str) -> None:
    from attnlab.layers.registry import names

    if attention not in names():
        pytest.skip(f"{attention} is not registered")
    lm = _lm(attention=attention, parity=False)
    with pytest.raises(ValueError, match=f"layer 1 \\({attention!r}\\) cannot be exported as a Llama: .*{why}"):
        check_llama_compatible(lm)


def test_export_command_writes_a_directory_auto_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from attnlab.train.loading import load_trained

    from hf_tiny import train_tiny_char_lm

    run = train_tiny_char_lm(tmp_path)
    out = tmp_path / "hf"
    assert main(["export", "--checkpoint", str(run), "--format", "hf", "--out", str(out)]) == 0
    assert "LlamaForCausalLM" in capsys.readouterr().out
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert (out / "attnlab_export.json").is_file()
    # the char tokenizer in its Hugging Face form: AutoTokenizer encodes and decodes as attnlab does
    trained = load_trained(run, device="cpu")
    tok = transformers.AutoTokenizer.from_pretrained(out)
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == trained.tokenizer.encode(text) and tok.decode(ids) == text
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    lm = load_trained(run, device="cpu").model
    idx = torch.randint(0, lm.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=idx).logits, lm(idx), atol=1e-5, rtol=0)
    # a second export into the same directory is refused; nothing is lost
    before = (out / "model.safetensors").read_bytes()
    assert main(["export", "--checkpoint", str(run), "--out", str(out)]) == 2
    assert "holds" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == before
    assert main(["export", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    assert "error" in capsys.readouterr().err


def test_a_layer_rope_base_other_than_the_models_is_refused() -> None:
    lm = _lm(attention_options={"standard": {"rope_base": 500.0}})
    with pytest.raises(ValueError, match="its RoPE base 500.0 differs from the model's rope_base=10000.0"):
        check_llama_compatible(lm)


def test_gpt2_tokenizer_hf_form_equals_tiktoken(tmp_path: Path) -> None:
    """The byte-level BPE rebuilt from the bundled ranks (vocabulary + merges) encodes real text exactly as attnlab's
    tiktoken encoder does, and decodes it back."""
    from attnlab.data.bundled import read_bundled_text
    from attnlab.data.tokenizers import GPT2Tokenizer
    from attnlab.integrations.hf_tokenizer import hf_tokenizer

    ours = GPT2Tokenizer()
    hf = hf_tokenizer(ours)
    text = read_bundled_text("tinyshakespeare")[:20000]
    odd = "naïve café — 日本語 🙂 it's  two  spaces\t tab\n\n\n  trailing   \r\n<|endoftext|> 3.14159 x=y+1"
    for t in (text, odd, " leading space", ""):
        ids = hf.encode(t, add_special_tokens=False)
        assert ids == ours.encode(t)
        assert hf.decode(ids) == t
    assert hf.eos_token_id == ours.eot_id and len(hf) == ours.vocab_size
    hf.save_pretrained(tmp_path)  # what an export writes, read back the way users will
    again = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert again(odd, add_special_tokens=False)["input_ids"] == ours.encode(odd)


def test_word_tokenizer_has_no_hf_form() -> None:
    from attnlab.data.tokenizers import WordTokenizer
    from attnlab.integrations.hf_tokenizer import hf_tokenizer

    assert hf_tokenizer(WordTokenizer.from_text("a b\nc")) is None
