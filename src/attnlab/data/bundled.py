"""The corpora and tokenizer files shipped inside the package (``attnlab/data/corpora/**/*.xz``).

Each file is an ``xz`` compression of a public file (a ``.gz`` original is decompressed first), sources and
licences in ``corpora/LICENSES.md`` and ``docs/data.md``. :func:`read_bundled` decompresses one in memory and
checks the SHA-256 of the decompressed bytes, so a corrupted install fails loudly instead of training on damaged
text. Nothing here touches the network.
"""

from __future__ import annotations

import hashlib
import lzma
from dataclasses import dataclass
from importlib import resources

__all__ = ["BundledFile", "BUNDLED", "BUNDLED_PARALLEL", "BUNDLED_TIMESERIES", "read_bundled", "read_bundled_text"]


@dataclass(frozen=True)
class BundledFile:
    """One shipped file: where it is (relative to ``attnlab/data``) and what it must decompress to."""

    filename: str
    size: int
    sha256: str


BUNDLED: dict[str, BundledFile] = {
    "tinyshakespeare": BundledFile(
        "corpora/tinyshakespeare.txt.xz", 1_115_394, "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    ),
    "wikitext2-train": BundledFile(
        "corpora/wikitext2-train.txt.xz", 10_797_148, "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f"
    ),
    "wikitext2-valid": BundledFile(
        "corpora/wikitext2-valid.txt.xz", 1_121_681, "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8"
    ),
    "wikitext2-test": BundledFile(
        "corpora/wikitext2-test.txt.xz", 1_256_449, "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0"
    ),
    "gpt2.tiktoken": BundledFile(
        "corpora/gpt2.tiktoken.xz", 835_554, "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
    ),
}

#: Parallel text: Multi30K task 1 (raw, untokenized; Elliott et al. 2016), one sentence per line, line ``i`` of the
#: English file translating line ``i`` of the German one. Read through :func:`attnlab.data.load_parallel`. Kept in
#: a table of its own beside :data:`BUNDLED` (the single-language corpora and the GPT-2 ranks); :func:`read_bundled`
#: serves both.
BUNDLED_PARALLEL: dict[str, BundledFile] = {
    "multi30k/train.de": BundledFile(
        "corpora/multi30k/train.de.xz", 2_110_398, "2c2b73fd2b548fbcde3a875e0a78d6ee94d498bfdee6bd3eae3945779e9ddf72"
    ),
    "multi30k/train.en": BundledFile(
        "corpora/multi30k/train.en.xz", 1_801_238, "460a15fbd157e34a7a9957ee388c1ca247fe47af3ef25fb50442af6c274e0fc6"
    ),
    "multi30k/val.de": BundledFile(
        "corpora/multi30k/val.de.xz", 75_981, "660e09eb7e1da2f856ea13ee5ad3cf6d36b3d5b0b733c857e94c5747a3dfc660"
    ),
    "multi30k/val.en": BundledFile(
        "corpora/multi30k/val.en.xz", 63_297, "1f2a23d992769b5b3d209b0a10dd0b77c08cceb1f20dfb97ed0aafa49d107227"
    ),
    "multi30k/test_2016_flickr.de": BundledFile(
        "corpora/multi30k/test_2016_flickr.de.xz",
        70_649,
        "4be6b5b3236b79c25475c6bb829800a7ce559e9ba7a1f6c2394fe4d40be46d16",
    ),
    "multi30k/test_2016_flickr.en": BundledFile(
        "corpora/multi30k/test_2016_flickr.en.xz",
        62_076,
        "399a4382932c1aadd3ceb9bef1008d388a64c76d4ae4e9d4728c6f4301cac182",
    ),
}

#: Time series: ETTh1, the hourly Electricity Transformer Temperature data of station 1 (Zhou et al., "Informer",
#: AAAI 2021, arXiv 2012.07436; github.com/zhouhaoyi/ETDataset), shipped unmodified under CC BY-ND 4.0 (licence
#: text in ``corpora/ett/LICENSE``). Read through :func:`attnlab.data.load_timeseries`.
BUNDLED_TIMESERIES: dict[str, BundledFile] = {
    "timeseries/etth1": BundledFile(
        "corpora/ett/ETTh1.csv.xz", 2_589_657, "f18de3ad269cef59bb07b5438d79bb3042d3be49bdeecf01c1cd6d29695ee066"
    ),
}


def read_bundled(name: str) -> bytes:
    """The decompressed bytes of the bundled file ``name`` (a key of :data:`BUNDLED`, :data:`BUNDLED_PARALLEL` or
    :data:`BUNDLED_TIMESERIES`), checked by SHA-256."""
    table = {**BUNDLED, **BUNDLED_PARALLEL, **BUNDLED_TIMESERIES}
    try:
        entry = table[name]
    except KeyError:
        raise ValueError(f"unknown bundled file {name!r}; bundled: {', '.join(sorted(table))}") from None
    resource = resources.files("attnlab.data").joinpath(entry.filename)
    try:
        compressed = resource.read_bytes()
    except FileNotFoundError:
        raise ValueError(
            f"bundled file {entry.filename!r} is missing from the attnlab installation; reinstall attnlab "
            "(the package data globs 'data/corpora/*' and 'data/corpora/**/*' must be included)"
        ) from None
    data = lzma.decompress(compressed)
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != entry.size or digest != entry.sha256:
        raise ValueError(
            f"bundled file {entry.filename!r} is corrupted: expected {entry.size} bytes with sha256 {entry.sha256}, "
            f"got {len(data)} bytes with sha256 {digest}; reinstall attnlab"
        )
    return data


def read_bundled_text(name: str) -> str:
    """The bundled file ``name`` decoded as UTF-8."""
    return read_bundled(name).decode("utf-8")
