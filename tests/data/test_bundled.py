"""The bundled files decompress to exactly the published files (sizes and SHA-256 from the data README)."""

from __future__ import annotations

import hashlib
import lzma
from importlib import resources

import pytest

from attnlab.data import BUNDLED, read_bundled

# Copied from the corpora README (shared/data/README.md), independently of attnlab.data.bundled.
EXPECTED = {
    "tinyshakespeare": (1_115_394, "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"),
    "wikitext2-train": (10_797_148, "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f"),
    "wikitext2-valid": (1_121_681, "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8"),
    "wikitext2-test": (1_256_449, "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0"),
    "gpt2.tiktoken": (835_554, "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"),
}


def test_bundled_table_is_complete() -> None:
    assert set(BUNDLED) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_decompressed_sha256_matches_readme(name: str) -> None:
    # Decompress the shipped file directly (not through read_bundled, which would also check it).
    raw = lzma.decompress(resources.files("attnlab.data").joinpath(BUNDLED[name].filename).read_bytes())
    size, sha = EXPECTED[name]
    assert len(raw) == size
    assert hashlib.sha256(raw).hexdigest() == sha
    assert read_bundled(name) == raw


def test_licence_notes_ship_with_the_data() -> None:
    notes = resources.files("attnlab.data").joinpath("corpora/LICENSES.md").read_text()
    for needle in ("CC BY-SA 3.0", "Merity", "karpathy/char-rnn", "openai/whisper", "MIT"):
        assert needle in notes


def test_corrupted_bundle_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    from attnlab.data import bundled

    monkeypatch.setitem(bundled.BUNDLED, "tinyshakespeare", bundled.BundledFile(BUNDLED["tinyshakespeare"].filename, 1, "0" * 64))
    with pytest.raises(ValueError, match="corrupted"):
        read_bundled("tinyshakespeare")


def test_unknown_bundled_name() -> None:
    with pytest.raises(ValueError, match="unknown bundled file 'nope'; bundled: gpt2.tiktoken"):
        read_bundled("nope")
