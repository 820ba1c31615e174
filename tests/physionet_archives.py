"""Small PhysioNet 2012 sets written by hand for the physionet tests (a helper module, not a conftest).

A set is ``set-x.tar.gz`` (one ``set-x/<RecordID>.txt`` per record, as the Challenge packs them) and
``Outcomes-x.txt``; the records are plain text, so a test can put any line it likes into one.
"""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np

OUTCOMES_HEADER = "RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death"
DESCRIPTORS = ("Age", "Gender", "Height", "ICUType", "Weight")
SERIES = ("HR", "Temp", "GCS", "Glucose", "NIMAP", "Urine")


def record_text(record_id: int, observations: list[tuple[str, str, str]] = (), descriptors=(54, 0, -1, 4, 80.5)) -> str:
    """A record file: the header, the 00:00 RecordID and descriptors, then ``observations`` (time, name, value)."""
    lines = ["Time,Parameter,Value", f"00:00,RecordID,{record_id}"]
    lines += [f"00:00,{name},{value}" for name, value in zip(DESCRIPTORS, descriptors)]
    lines += [",".join(o) for o in observations]
    return "\n".join(lines) + "\n"


def random_record(record_id: int, rng: np.random.Generator, steps: int = 6, scale: float = 1.0) -> str:
    """A plausible record: ``steps`` time stamps within 48 h, two to four variables at each (values x ``scale``)."""
    minutes = np.sort(rng.choice(np.arange(1, 48 * 60 + 1), size=steps, replace=False))
    observations = []
    for m in minutes:
        for name in rng.choice(SERIES, size=int(rng.integers(2, 5)), replace=False):
            value = round(float(rng.uniform(1, 200)) * scale, 1)
            observations.append((f"{m // 60:02d}:{m % 60:02d}", str(name), f"{value:g}"))
    return record_text(record_id, observations, descriptors=(int(rng.integers(20, 90)), int(rng.integers(0, 2)),
                                                             -1, int(rng.integers(1, 5)), 70))


def write_archive(path: Path, members: dict[str, str | bytes]) -> Path:
    """``path`` (a .tar.gz) holding one file per ``{name inside the archive: text}``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in members.items():
            data = text.encode() if isinstance(text, str) else text
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(buf.getvalue())
    return Path(path)


def write_outcomes(path: Path, labels: dict[int, int], extra_lines: list[str] = ()) -> Path:
    rows = [f"{rid},10,5,8,-1,{label}" for rid, label in labels.items()]
    Path(path).write_text("\n".join([OUTCOMES_HEADER, *rows, *extra_lines]) + "\n")
    return Path(path)


def write_set(folder: Path, name: str, records: dict[int, str], labels: dict[int, int] | None = None) -> tuple[Path, Path]:
    """``folder/set-<name>.tar.gz`` with ``records`` ({RecordID: text}) and its outcomes (``labels``, default
    RecordID % 3 == 0 dies)."""
    labels = {rid: int(rid % 3 == 0) for rid in records} if labels is None else labels
    tar = write_archive(Path(folder) / f"set-{name}.tar.gz",
                        {f"set-{name}/{rid}.txt": text for rid, text in records.items()})
    return tar, write_outcomes(Path(folder) / f"Outcomes-{name}.txt", labels)


def random_set(folder: Path, name: str, first_id: int, n: int, seed: int, scale: float = 1.0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    return write_set(folder, name, {rid: random_record(rid, rng, scale=scale) for rid in range(first_id, first_id + n)})
