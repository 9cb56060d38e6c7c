"""Text in: the training stream (packed token sequences) and the held-out text for measurements.

Real sources by default (Hugging Face ``datasets``, streamed); offline copies when ``SDLIB_DATA_DIR`` points
at a folder laid out as ``data/README.md`` says. Nothing is downloaded at import time.
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from sdlib.errors import SdlibError
from sdlib.paths import data_dir
from sdlib.provenance import file_sha256
from sdlib.types import WindowPlacement, parse

# name -> (HF dataset, config, split, file under SDLIB_DATA_DIR)
FINEWEB_EDU = ("HuggingFaceFW/fineweb-edu", "sample-10BT", "train", "fineweb-edu-sample/sample-10BT-first-1M-chars.txt")
WIKITEXT = {
    "wikitext-test": ("Salesforce/wikitext", "wikitext-2-raw-v1", "test", "wikitext-2-raw-v1/wiki.test.raw"),
    "wikitext-valid": ("Salesforce/wikitext", "wikitext-2-raw-v1", "validation", "wikitext-2-raw-v1/wiki.valid.raw"),
}
LAMBADA_FILE = "lambada_openai/test.jsonl"
# The offline copies are exact copies of public files: a different hash means a damaged or wrong file.
OFFLINE_SHA256 = {
    LAMBADA_FILE: "4aa8d02cd17c719165fc8a7887fddd641f43fcafa4b1c806ca8abc31fabdb226",
    "wikitext-2-raw-v1/wiki.test.raw": "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08",
    "wikitext-2-raw-v1/wiki.valid.raw": "4cd0f6876d07a413aa911261ff6d363c72d757d47f0fdd6015702014c89cb9c7",
    FINEWEB_EDU[3]: "898138edfad3ff17d91697ee8c758d64b79356720c427accddbbdf6612bb5a6e",
}


def offline_file(relative: str, dataset: str) -> Path | None:
    """The offline copy of a dataset file under SDLIB_DATA_DIR, None when that is unset; clear error if missing."""
    root = data_dir()
    if root is None:
        return None
    path = root / relative
    if not path.is_file():
        raise SdlibError(f"{dataset}: SDLIB_DATA_DIR={root} has no {relative}; lay the folder out as "
                         "data/README.md says, or unset SDLIB_DATA_DIR to use the Hugging Face hub")
    if path.stat().st_size == 0:
        raise SdlibError(f"{dataset}: {path} is empty; restore the file (data/README.md gives its source and sha256)")
    expected = OFFLINE_SHA256.get(relative)
    if expected is not None:

        actual = file_sha256(path)
        if actual != expected:
            raise SdlibError(f"{dataset}: {path} has sha256 {actual[:12]}..., not the expected {expected[:12]}...; "
                             "restore the exact file (data/README.md gives its source and sha256)")
    return path


def _hf_dataset(path: str, config: str, split: str, streaming: bool):
    try:
        import datasets

        return datasets.load_dataset(path, config, split=split, streaming=streaming)
    except Exception as err:  # datasets raises many types for "no network"
        raise SdlibError(f"could not load dataset {path} ({config}, {split}) from the Hugging Face hub "
                         f"({type(err).__name__}); offline, set SDLIB_DATA_DIR to a folder laid out as "
                         "data/README.md says") from err


# --- held-out text for measurements ---------------------------------------------------------------------

def read_text(source: str) -> tuple[str, dict[str, str]]:
    """The text of ``wikitext-test``, ``wikitext-valid`` or a file; and a provenance entry (name -> hash/id).

    WikiText offline is the raw file as it is; online, the ``Salesforce/wikitext`` rows joined as they are.
    """

    if source in WIKITEXT:
        hf_path, config, split, rel = WIKITEXT[source]
        path = offline_file(rel, f"WikiText-2 ({split})")
        if path is None:
            rows = _hf_dataset(hf_path, config, split, streaming=False)
            return "".join(rows["text"]), {source: f"hf:{hf_path}/{config}/{split}"}
        return read_utf8(path), {source: f"sha256:{file_sha256(path)}"}
    path = Path(source).expanduser()
    if not path.is_file():
        raise SdlibError(f"text {source!r} is neither {' nor '.join(WIKITEXT)} nor an existing file")
    return read_utf8(path), {str(path.resolve()): f"sha256:{file_sha256(path)}"}


WIKITEXT_ARTICLE = re.compile(r"^ = [^=].*[^=] = $", re.MULTILINE)
"""a WikiText article's title line (`` = Robert Boulter = ``; section titles have ``= =``)"""


def document_starts(text: str) -> list[int]:
    """Character offsets where the documents of ``text`` start: WikiText's articles (one title line each), or the
    whole text as one document."""
    starts = [m.start() for m in WIKITEXT_ARTICLE.finditer(text)]
    return [0] + [s for s in starts if s > 0] if starts else [0]


def spread_windows(tokenizer, text: str, n_windows: int, window_len: int) -> tuple[torch.Tensor, list[int]]:
    """Tokenize ``text`` once as one string and take ``n_windows`` windows evenly spaced over all of it, the first
    at its start and the last at its end (they never overlap). -> (LongTensor [n, window_len], the document
    (``document_starts``) each window starts in). Fewer tokens than the windows need gives fewer windows."""
    fast = getattr(tokenizer, "is_fast", False)
    encoded = tokenizer(text, verbose=False, return_offsets_mapping=fast)
    ids = encoded["input_ids"]
    n = _window_count(len(ids), n_windows, window_len)
    if n == 0:
        return torch.tensor([ids], dtype=torch.long), [0]
    starts = [round(i * (len(ids) - window_len) / max(n - 1, 1)) for i in range(n)]
    windows = torch.tensor([ids[s:s + window_len] for s in starts], dtype=torch.long)
    if not fast:  # no character offsets: each window its own unit
        return windows, list(range(n))
    docs = document_starts(text)
    return windows, [bisect.bisect_right(docs, encoded["offset_mapping"][s][0]) - 1 for s in starts]


def text_windows(tokenizer, text: str, n_windows: int, window_len: int) -> torch.Tensor:
    """Tokenize ``text`` once as one string (tokenizer defaults) and cut its first tokens into windows.

    -> LongTensor [n, window_len] with n = min(n_windows, tokens // window_len); a text shorter than one
    window gives one window of all its tokens. Fewer than two tokens is an error (nothing moves).
    """
    ids = tokenizer(text, verbose=False)["input_ids"]  # no warning about exceeding model_max_length
    n = _window_count(len(ids), n_windows, window_len)
    if n == 0:
        return torch.tensor([ids], dtype=torch.long)
    return torch.tensor(ids[: n * window_len], dtype=torch.long).view(n, window_len)


def _window_count(n_tokens: int, n_windows: int, window_len: int) -> int:
    """How many whole windows a text of ``n_tokens`` gives (0: shorter than one window, so one window of all of
    it); fewer than two tokens is an error (nothing moves)."""
    if n_tokens < 2:
        raise SdlibError(f"the text has {n_tokens} token(s): at least two are needed to measure anything")
    return 0 if n_tokens < window_len else min(n_windows, n_tokens // window_len)


@dataclass(frozen=True)
class TextWindows:
    """Which held-out text a measurement reads: ``windows`` windows of ``window_len`` tokens of ``wikitext-test``,
    ``wikitext-valid`` or a file, spread evenly over all of it (``spread_windows``) or its first tokens
    (``first``, ``text_windows``)."""

    text: str = "wikitext-test"
    windows: int = 64
    window_len: int = 512
    placement: str = "spread"

    def __post_init__(self) -> None:
        if self.windows < 1 or self.window_len < 2:
            raise SdlibError("windows must be >= 1 and the window length >= 2")
        object.__setattr__(self, "placement", str(parse(WindowPlacement, self.placement, "window placement")))

    def sample(self, tokenizer) -> tuple[torch.Tensor, list[int], dict[str, str]]:
        """(the windows' token ids [n, window_len], the document each starts in, the text's provenance)."""
        body, hashes = read_text(self.text)
        if self.placement == WindowPlacement.FIRST:
            ids = text_windows(tokenizer, body, self.windows, self.window_len)
            return ids, list(range(len(ids))), hashes
        ids, documents = spread_windows(tokenizer, body, self.windows, self.window_len)
        return ids, documents, hashes

    def ids(self, tokenizer) -> torch.Tensor:
        """The windows' token ids [n, window_len]."""
        return self.sample(tokenizer)[0]

    def describe(self) -> str:
        """What a reader needs next to an S: ``wikitext-test, 64 x 512 tokens spread over the text``."""
        if self.placement == WindowPlacement.SPREAD:
            return f"{self.text}, {self.windows} x {self.window_len} tokens spread over the text"
        return f"{self.text}, {self.windows} x {self.window_len} first tokens"


# --- the training stream ----------------------------------------------------------------------------------

def training_documents(source: str, text_field: str = "text", shuffle_seed: int | None = None
                       ) -> tuple[Iterator[str], dict[str, str]]:
    """Documents of a training source and a provenance entry.

    ``fineweb-edu``: the FineWeb-Edu ``sample-10BT`` stream (with ``shuffle_seed``: through a 10,000-document
    shuffle buffer), or its offline sample (one document: the sample's boundaries are lost). A ``.txt`` file is
    one document, a ``.jsonl`` file one per line (field ``text``), a folder all such files in name order.
    """

    if source == "fineweb-edu":
        hf_path, config, split, rel = FINEWEB_EDU
        path = offline_file(rel, "FineWeb-Edu")
        if path is None:
            stream = _hf_dataset(hf_path, config, split, streaming=True)
            if shuffle_seed is not None:
                stream = stream.shuffle(seed=shuffle_seed, buffer_size=10_000)
            return (row[text_field] for row in stream), {source: f"hf:{hf_path}/{config}/{split}"}
        return iter([path.read_text(encoding="utf-8")]), {source: f"sha256:{file_sha256(path)}"}
    root = Path(source).expanduser()
    if not root.exists():
        raise SdlibError(f"training data {source!r} is neither 'fineweb-edu' nor an existing file or folder")
    files = sorted(p for p in root.rglob("*") if p.suffix in (".txt", ".jsonl")) if root.is_dir() else [root]
    if not files:
        raise SdlibError(f"training data folder {root} holds no .txt or .jsonl files")
    return _file_documents(files, text_field), {str(f.resolve()): f"sha256:{file_sha256(f)}" for f in files}


def read_utf8(path: Path, what: str = "text file") -> str:
    """A file's text, or one line saying it is not UTF-8 (and where)."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise SdlibError(f"{what} {path} is not UTF-8 text (byte {err.start}): convert it to UTF-8") from None


def _file_documents(files: Iterable[Path], text_field: str) -> Iterator[str]:
    for path in files:
        if path.stat().st_size == 0:
            raise SdlibError(f"training data file {path} is empty")
        text = read_utf8(path, "training data file")
        if path.suffix != ".jsonl":
            yield text
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)[text_field]
            except (json.JSONDecodeError, KeyError, TypeError, IndexError):
                raise SdlibError(f"{path}, line {number}: not a JSON object with a {text_field!r} field") from None
            if not isinstance(value, str):
                raise SdlibError(f"{path}, line {number}: the {text_field!r} field is {type(value).__name__}, not "
                                 "a string of text")
            yield value


class PackedSequences:
    """Documents tokenized and packed into fixed-length sequences, EOS after each document.

    ``sequence(i)`` is deterministic in i, so a resumed run continues at the exact position. Tokens are
    produced lazily from the document stream; when the stream ends, the token array repeats (``epochs``
    tells how often it has been read). With ``shuffle_seed``, a finite text is cut into its whole sequences
    and each pass over it reads them in a new order drawn from the seed and the pass number.
    """

    def __init__(self, documents: Iterator[str], tokenizer, seq_len: int, batch_docs: int = 64, eager: bool = False,
                 shuffle_seed: int | None = None):
        self.documents, self.tokenizer, self.seq_len, self.batch_docs = documents, tokenizer, seq_len, batch_docs
        self.shuffle_seed = shuffle_seed
        self._orders: dict[int, list[int]] = {}
        self.eos = tokenizer.eos_token_id
        if self.eos is None:
            raise SdlibError("the tokenizer has no EOS token to separate documents")
        self.tokens: list[int] = []
        self.exhausted = False
        if eager:  # a finite local source: tokenize it all now, so epochs are known from the start
            self._fill(1 << 62)

    def _fill(self, needed: int) -> None:
        while len(self.tokens) < needed and not self.exhausted:
            batch = [doc for _, doc in zip(range(self.batch_docs), self.documents)]
            if not batch:
                self.exhausted = True
                break
            for ids in self.tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]:
                self.tokens.extend(ids)
                self.tokens.append(self.eos)
        if self.exhausted and len(self.tokens) < self.seq_len:
            raise SdlibError(f"the training data has {len(self.tokens)} tokens, fewer than one sequence ({self.seq_len})")

    def sequence(self, index: int) -> torch.Tensor:
        if self.shuffle_seed is not None and self.exhausted:
            count = len(self.tokens) // self.seq_len
            epoch, position = divmod(index, count)
            if epoch not in self._orders:
                g = torch.Generator().manual_seed(self.shuffle_seed * 1_000_003 + epoch)
                self._orders = {epoch: torch.randperm(count, generator=g).tolist()}
            start = self._orders[epoch][position] * self.seq_len
            return torch.tensor(self.tokens[start: start + self.seq_len], dtype=torch.long)
        start = index * self.seq_len
        self._fill(start + self.seq_len)
        n = len(self.tokens)
        if start + self.seq_len <= n:
            return torch.tensor(self.tokens[start: start + self.seq_len], dtype=torch.long)
        return torch.tensor([self.tokens[(start + j) % n] for j in range(self.seq_len)], dtype=torch.long)

    def batch(self, start: int, count: int) -> torch.Tensor:
        return torch.stack([self.sequence(i) for i in range(start, start + count)])

    def epochs(self, sequences_read: int) -> float | None:
        """How many times the data has been read after ``sequences_read`` sequences (None while unknown)."""
        if not self.exhausted:
            return None
        return sequences_read * self.seq_len / len(self.tokens)
