"""PhysioNet 2012 records as they come in the wild: a line that cannot be read costs only itself.

* one hand-made record per kind of defective line (an empty or unknown parameter name, a value that is
  empty, text or NaN, a repeated header, a malformed line, a bad time stamp, a time past 48:00, a blank
  line): the record parses to exactly the record without that line, and the defect is counted once, with
  its line number;
* Windows line ends are parsed (same arrays) and counted; 48:00 itself is inside the window;
* a record without RecordID, a record without outcome, an outcome without record, repeated and conflicting
  outcome rows, an unreadable outcome row: skipped and counted, the other records kept;
* an archive that mixes them all with good records: every count checked exactly (the CSV beside the cache
  and the summary line), the good records' values checked against the same records parsed clean;
* a file that cannot be read as a whole is an error naming it.
"""
from __future__ import annotations

import csv
import logging

import numpy as np
import pytest

from experiments.errors import DataError
from experiments.physionet import data as pdata
from experiments.physionet.benchmark import BENCHMARK
from experiments.physionet.meta import defects_path
from physionet_archives import record_text, write_archive, write_outcomes, write_set

Q = 0.016
GOOD_OBS = [("00:06", "HR", "70"), ("00:07", "HR", "80"), ("00:07", "HR", "90"), ("00:07", "Temp", "36.5"),
            ("01:30", "GCS", "15"), ("47:59", "HR", "91")]
GOOD = record_text(1, GOOD_OBS)


def lines_with(defect: str, at: int = 9) -> list[str]:
    """The good record's lines with ``defect`` inserted as line ``at`` (1-based: the header is line 1)."""
    lines = GOOD.splitlines()
    return lines[:at - 1] + [defect] + lines[at - 1:]


def same_record(a: pdata.Record, b: pdata.Record) -> bool:
    return (a.record_id == b.record_id and a.has_series == b.has_series and np.array_equal(a.times, b.times)
            and np.array_equal(a.values, b.values) and np.array_equal(a.mask, b.mask))


def counts(defects: pdata.Defects) -> dict[tuple[str, str], int]:
    return {(r["file"], r["kind"]): r["count"] for r in defects.rows()}


@pytest.mark.parametrize("kind, line", [
    ("empty_parameter", "06:32,,2.7"),
    ("empty_parameter", "06:32, ,2.7"),
    ("unknown_parameter", "06:32,Foo,2.7"),
    ("empty_value", "06:32,HR,"),
    ("non_numeric_value", "06:32,HR,abc"),
    ("non_numeric_value", "06:32,HR,NaN"),
    ("non_numeric_value", "06:32,HR,inf"),
    ("repeated_header", "Time,Parameter,Value"),
    ("malformed_line", "06:32;HR;70"),
    ("malformed_line", "06:32,HR,70,1"),
    ("bad_time", "6h32,HR,70"),
    ("bad_time", "06:75,HR,70"),
    ("bad_time", ",HR,70"),
    ("after_48h", "48:01,HR,70"),
    ("after_48h", "52:10,Temp,37"),
    ("blank_line", ""),
])
def test_each_defective_line_is_skipped_and_counted(kind, line):
    clean = pdata.parse_record(GOOD.splitlines(), Q, "good")
    defects = pdata.Defects()
    parsed = pdata.parse_record(lines_with(line), Q, "rec.txt", defects)
    assert same_record(parsed, clean)  # nothing else changed: the other lines and rows are the clean ones
    assert defects.rows() == [{"file": "rec.txt", "kind": kind, "action": pdata.DEFECT_ACTIONS[kind], "count": 1,
                               "first_line": 9, "example": line.strip()}]


def test_good_record_has_no_defect_and_spaces_around_fields_are_read():
    defects = pdata.Defects()
    clean = pdata.parse_record(GOOD.splitlines(), Q, "good", defects)
    assert clean.record_id == 1 and clean.has_series and defects.rows() == []
    col = pdata.VARIABLE_INDEX
    # 00:06 -> 6.25 -> 6 x 0.016 h, 00:07 -> 7.29 -> 7: two rows (the two HR values of 00:07 averaged);
    # 01:30 -> 93.75 -> 94; 47:59 -> 2998.96 -> 2999
    assert clean.times.tolist() == pytest.approx([0, 0.096, 0.112, 1.504, 47.984])
    assert clean.values[1, col["HR"]] == 70.0 and clean.values[2, col["HR"]] == 85.0
    assert clean.values[-1, col["HR"]] == 91.0 and clean.mask.sum() == 5 + 1 + 2 + 1 + 1
    spaced = GOOD.replace("01:30,GCS,15", " 01:30 , GCS , 15 ")
    assert same_record(pdata.parse_record(spaced.splitlines(), Q, "spaced", defects), clean)
    assert defects.rows() == []


def test_48_hours_is_inside_the_window_and_later_lines_of_one_stamp_are_all_dropped():
    defects = pdata.Defects()
    rec = pdata.parse_record(record_text(1, [("48:00", "HR", "70"), ("48:30", "HR", "71"), ("48:30", "Temp", "37"),
                                             ("49:00", "HR", "72")]).splitlines(), Q, "r", defects)
    assert rec.times.tolist() == pytest.approx([0.0, 48.0]) and rec.values[1, pdata.VARIABLE_INDEX["HR"]] == 70.0
    assert counts(defects) == {("r", "after_48h"): 3}
    assert defects.rows()[0]["first_line"] == 9


def test_a_record_of_defects_only_keeps_its_descriptors_and_label():
    defects = pdata.Defects()
    rec = pdata.parse_record(record_text(7, [("01:00", "", "1"), ("50:00", "HR", "1"), ("02:00", "HR", "x")]).splitlines(),
                             Q, "r", defects)
    assert rec.record_id == 7 and not rec.has_series and len(rec.times) == 1 and rec.mask.sum() == 5
    assert counts(defects) == {("r", "empty_parameter"): 1, ("r", "non_numeric_value"): 1, ("r", "after_48h"): 1}


def test_windows_line_ends_are_parsed_and_counted(tmp_path):
    crlf = GOOD.replace("\n", "\r\n")
    tar, outcomes = write_set(tmp_path, "a", {1: crlf, 2: record_text(2, GOOD_OBS)}, {1: 0, 2: 1})
    outcomes.write_bytes(outcomes.read_bytes().replace(b"\n", b"\r\n"))
    defects = pdata.Defects()
    records, labels = pdata.read_set(tar, outcomes, Q, defects=defects)
    clean = pdata.parse_record(GOOD.splitlines(), Q, "good")
    assert same_record(records[0], clean) and labels.tolist() == [0, 1]
    assert counts(defects) == {("Outcomes-a.txt", "windows_line_ends"): 3,
                               ("set-a.tar.gz:set-a/1.txt", "windows_line_ends"): len(GOOD.splitlines())}


def test_record_and_outcome_mismatches_are_skipped_and_counted(tmp_path):
    records = {1: GOOD, 2: record_text(2, GOOD_OBS), 3: record_text(3, GOOD_OBS), 4: record_text(4, GOOD_OBS),
               5: record_text(5, GOOD_OBS).replace("00:00,RecordID,5\n", "")}
    tar = write_archive(tmp_path / "set-a.tar.gz", {f"set-a/{rid}.txt": text for rid, text in records.items()})
    # 1: fine; 2: no outcome row; 3: the same label twice; 4: two different labels; 9: no record; a bad row.
    outcomes = write_outcomes(tmp_path / "Outcomes-a.txt", {1: 1, 3: 0, 4: 0, 9: 1},
                              ["3,10,5,8,-1,0", "4,10,5,8,-1,1", "6,10,5,8,-1,0.5", OUTCOMES_ROW_HEADER])
    defects = pdata.Defects()
    kept, labels = pdata.read_set(tar, outcomes, Q, defects=defects)
    assert [r.record_id for r in kept] == [1, 3] and labels.tolist() == [1, 0]
    assert counts(defects) == {
        ("Outcomes-a.txt", "repeated_header"): 1, ("Outcomes-a.txt", "bad_outcome_line"): 1,
        ("Outcomes-a.txt", "repeated_outcome"): 2, ("Outcomes-a.txt", "outcome_without_record"): 1,
        ("set-a.tar.gz:set-a/2.txt", "record_without_outcome"): 1,
        ("set-a.tar.gz:set-a/4.txt", "conflicting_outcome"): 1,
        ("set-a.tar.gz:set-a/5.txt", "no_record_id"): 1}
    rows = {(r["file"], r["kind"]): r for r in defects.rows()}
    assert rows[("Outcomes-a.txt", "outcome_without_record")]["first_line"] == 5  # RecordID 9's row
    assert rows[("Outcomes-a.txt", "bad_outcome_line")]["example"] == "6,10,5,8,-1,0.5"


OUTCOMES_ROW_HEADER = "RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death"

# A set mixing good records with one record per defect; every good record's values are checked.
MIXED_DEFECTS = {  # RecordID: (the line inserted as line 9 of a good record, its kind)
    11: ("06:32,,2.7", "empty_parameter"), 12: ("06:32,Foo,2.7", "unknown_parameter"),
    13: ("06:32,HR,abc", "non_numeric_value"), 14: ("06:32,HR,", "empty_value"),
    15: ("Time,Parameter,Value", "repeated_header"), 16: ("48:01,HR,70", "after_48h"),
    17: ("06:32;HR;70", "malformed_line"), 18: ("6h32,HR,70", "bad_time"),
}


def mixed_set(folder):
    good = {rid: record_text(rid, [(t, n, str(float(v) + rid)) for t, n, v in GOOD_OBS]) for rid in (1, 2, 3, 20)}
    texts = dict(good)
    for rid, (line, _) in MIXED_DEFECTS.items():
        lines = record_text(rid, GOOD_OBS).splitlines()
        texts[rid] = "\n".join(lines[:8] + [line] + lines[8:]) + "\n"
    texts[19] = record_text(19, GOOD_OBS).replace("\n", "\r\n")  # parsed, counted
    texts[21] = record_text(21, GOOD_OBS)  # no outcome row
    labels = {rid: int(rid % 2) for rid in texts if rid != 21}
    labels[99] = 1  # an outcome with no record
    tar = write_archive(folder / "physionet2012" / "set-a.tar.gz",
                        {f"set-a/{rid}.txt": text for rid, text in sorted(texts.items(), reverse=True)})
    outcomes = write_outcomes(folder / "physionet2012" / "Outcomes-a.txt", labels)
    return tar, outcomes, good, labels


def test_mixed_archive_counts_exactly_and_keeps_every_good_value(tmp_path, caplog):
    tar, outcomes, good, labels = mixed_set(tmp_path)
    data = {"folder": "physionet2012", "sets": ["a"], "quantization": Q, "limit": None}
    with caplog.at_level(logging.INFO, logger="experiments.physionet.data"):
        path = BENCHMARK.prepare({"data": data}, tmp_path, tmp_path / "cache", download=False)
    import torch

    cache = torch.load(path, weights_only=True)
    ids = cache["record_ids"].tolist()
    assert ids == [1, 2, 3, *MIXED_DEFECTS, 19, 20]  # by RecordID; 21 has no outcome
    assert cache["labels"].tolist() == [labels[i] for i in ids]
    offsets = cache["offsets"].numpy()
    for rid, text in good.items():
        i = ids.index(rid)
        rows = slice(offsets[i], offsets[i + 1])
        clean = pdata.parse_record(text.splitlines(), Q, "clean")
        assert np.array_equal(cache["values"][rows].numpy(), clean.values)
        assert np.array_equal(cache["mask"][rows].numpy(), clean.mask)
        assert np.array_equal(cache["times"][rows].numpy(), clean.times)
        col = pdata.VARIABLE_INDEX
        assert cache["values"][rows][2, col["HR"]].item() == pytest.approx(85.0 + rid)  # the mean of 80+r and 90+r
    # A defective record keeps everything but its bad line: it equals the same record without it.
    for rid in MIXED_DEFECTS:
        i = ids.index(rid)
        clean = pdata.parse_record(record_text(rid, GOOD_OBS).splitlines(), Q, "clean")
        assert np.array_equal(cache["values"][offsets[i]:offsets[i + 1]].numpy(), clean.values)
    expected = {(f"set-a.tar.gz:set-a/{rid}.txt", kind, "1", "9", line) for rid, (line, kind) in MIXED_DEFECTS.items()}
    expected |= {("set-a.tar.gz:set-a/19.txt", "windows_line_ends", str(len(GOOD.splitlines())), "", ""),
                 ("set-a.tar.gz:set-a/21.txt", "record_without_outcome", "1", "", ""),
                 ("Outcomes-a.txt", "outcome_without_record", "1", str(len(labels) + 1), "99")}
    with open(defects_path(path), newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == pdata.DEFECT_COLUMNS
    assert {(r["file"], r["kind"], r["count"], r["first_line"], r["example"]) for r in table} == expected
    assert len(table) == len(expected) and all(r["action"] == pdata.DEFECT_ACTIONS[r["kind"]] for r in table)
    assert cache["defects"] == [{**r, "count": int(r["count"]), "first_line": int(r["first_line"]) if r["first_line"] else None}
                                for r in table]
    summary = [r.getMessage() for r in caplog.records if "read 13 records of sets a" in r.getMessage()]
    assert len(summary) == 1 and summary[0].count("(1 file)") == 11
    assert "1 empty_parameter (1 file)" in summary[0] and str(defects_path(path)) in summary[0]
    assert [r.levelno for r in caplog.records if r.getMessage() == summary[0]] == [logging.WARNING]
    # Prepared again with the same settings: up to date, nothing parsed; without its report it is made again.
    before = path.stat().st_mtime_ns
    assert BENCHMARK.prepare({"data": data}, tmp_path, tmp_path / "cache", download=False) == path
    assert path.stat().st_mtime_ns == before
    defects_path(path).unlink()
    BENCHMARK.prepare({"data": data}, tmp_path, tmp_path / "cache", download=False)
    assert defects_path(path).is_file()


def test_a_clean_set_writes_an_empty_report(tmp_path):
    write_set(tmp_path / "physionet2012", "a", {1: GOOD, 2: record_text(2, GOOD_OBS)})
    data = {"folder": "physionet2012", "sets": ["a"], "quantization": Q, "limit": None}
    path = BENCHMARK.prepare({"data": data}, tmp_path, tmp_path / "cache", download=False)
    assert defects_path(path).read_text() == ",".join(pdata.DEFECT_COLUMNS) + "\n"


# ---------------------------------------------------------------------------------------------- whole files
def test_files_that_cannot_be_read_as_a_whole_are_errors_naming_them(tmp_path):
    tar, outcomes = write_set(tmp_path, "a", {1: GOOD})
    headless = write_archive(tmp_path / "headless" / "set-a.tar.gz",
                             {"set-a/1.txt": GOOD, "set-a/2.txt": "00:00,RecordID,2\n00:01,HR,70\n"})
    with pytest.raises(DataError, match=r"set-a.tar.gz:set-a/2.txt: first line is '00:00,RecordID,2'.*"
                                        r"not a PhysioNet 2012 record file \(in .*headless/set-a.tar.gz\)"):
        pdata.read_set(headless, outcomes, Q)
    garbage = tmp_path / "garbage" / "set-a.tar.gz"
    garbage.parent.mkdir()
    garbage.write_bytes(b"not a gzip archive at all")
    with pytest.raises(DataError, match=r"cannot read .*garbage/set-a.tar.gz.*corrupt or truncated"):
        pdata.read_set(garbage, outcomes, Q)
    with pytest.raises(DataError, match=r"cannot read .*nowhere/Outcomes-a.txt"):
        pdata.read_set(tar, tmp_path / "nowhere" / "Outcomes-a.txt", Q)
    no_header = tmp_path / "Outcomes-x.txt"
    no_header.write_text("1,10,5,8,-1,0\n")
    with pytest.raises(DataError, match=r"Outcomes-x.txt is not a PhysioNet 2012 outcomes file"):
        pdata.read_set(tar, no_header, Q)
    only_bad = tmp_path / "Outcomes-y.txt"
    only_bad.write_text(OUTCOMES_ROW_HEADER + "\n1,10,5,8,-1,yes\n")
    with pytest.raises(DataError, match=r"Outcomes-y.txt has a header but no readable outcome rows"):
        pdata.read_set(tar, only_bad, Q)
    other_set = write_outcomes(tmp_path / "Outcomes-b.txt", {5: 0, 6: 1})
    with pytest.raises(DataError, match=r"no outcome for any of the 1 records .*not from the same set"):
        pdata.read_set(tar, other_set, Q)
    latin = write_archive(tmp_path / "latin" / "set-a.tar.gz", {"set-a/1.txt": GOOD.encode() + "é".encode("latin-1")})
    with pytest.raises(DataError, match=r"member set-a/1.txt is not UTF-8 text"):
        pdata.read_set(latin, outcomes, Q)
