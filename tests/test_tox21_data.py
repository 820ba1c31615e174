"""Tox21 data layer: TrimNet featurisation, the real CSV, the feature cache, split, class weights,
the masked ROC-AUC (against scikit-learn) and the masked class-weighted loss."""
from __future__ import annotations

import gzip
import math
import shutil

import numpy as np
import pytest
import torch
from rdkit import Chem
from sklearn.metrics import roc_auc_score
from torch_geometric.loader import DataLoader

from experiments.errors import DataError
from experiments.tox21 import data as tdata
from experiments.tox21 import features as F
from experiments.tox21.data import TASKS, class_weights, featurise, load_csv, split_indices
from experiments.tox21.metric import masked_class_weighted_loss, masked_mean_roc_auc, roc_auc

NAN = float("nan")


# ----------------------------------------------------------------------------------------------
# Featurisation on known molecules


def slots(row: torch.Tensor) -> set[str]:
    """Names of the non-zero atom-feature slots (readable assertions)."""
    return {F.ATOM_FEATURE_NAMES[i] for i in torch.nonzero(row).flatten().tolist()}


def test_ethanol():
    d = F.smiles_to_data("CCO", [0] * 6 + [1] + [NAN] * 5, mol_id="ETH")
    assert d.x.shape == (3, 39) and d.x.dtype == torch.float32
    assert d.edge_index.shape == (2, 4) and d.edge_index.dtype == torch.long
    assert d.edge_attr.shape == (4, 10) and d.edge_attr.dtype == torch.float32
    # both directions, ordered by (source, target) as TrimNet's atom-pair loop emits them
    assert d.edge_index.tolist() == [[0, 1, 1, 2], [1, 0, 2, 1]]
    assert slots(d.x[0]) == {"element=C", "degree=1", "hybridisation=SP3"}
    assert slots(d.x[1]) == {"element=C", "degree=2", "hybridisation=SP3"}
    assert slots(d.x[2]) == {"element=O", "degree=1", "hybridisation=SP3"}
    single = torch.zeros(10)
    single[0] = 1  # SINGLE
    single[6] = 1  # STEREONONE
    assert torch.equal(d.edge_attr, single.repeat(4, 1))
    assert d.y.shape == (1, 12) and d.y_mask.shape == (1, 12) and d.y_mask.dtype == torch.bool
    assert d.y.tolist() == [[0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0]]
    assert d.y_mask.tolist() == [[True] * 7 + [False] * 5]
    assert d.smiles == "CCO" and d.mol_id == "ETH"


def test_benzene_is_aromatic_everywhere():
    d = F.smiles_to_data("c1ccccc1")
    assert d.x.shape == (6, 39) and d.edge_index.shape == (2, 12)
    for row in d.x:
        assert slots(row) == {"element=C", "degree=2", "hybridisation=SP2", "aromatic"}
    aromatic = dict(zip(F.BOND_FEATURE_NAMES, [0.0] * 10)) | {
        "type=AROMATIC": 1.0, "conjugated": 1.0, "in_ring": 1.0, "stereo=STEREONONE": 1.0}
    assert torch.equal(d.edge_attr, torch.tensor([list(aromatic.values())] * 12))
    assert d.y_mask.sum() == 0 and d.y.abs().sum() == 0  # no labels given: all missing


def test_single_ion_has_no_edges_and_still_batches():
    d = F.smiles_to_data("[Na+]", [1.0] * 12)
    assert d.x.shape == (1, 39) and d.num_nodes == 1
    assert d.edge_index.shape == (2, 0) and d.edge_index.dtype == torch.long
    assert d.edge_attr.shape == (0, 10)
    assert slots(d.x[0]) == {"element=other", "degree=0", "formal_charge", "hybridisation=other"}
    assert d.x[0, F.CHARGE_SLOT] == 1.0
    # a bond-less graph mixed with normal ones collates into a consistent batch
    batch = next(iter(DataLoader([F.smiles_to_data("CCO"), d, F.smiles_to_data("[Cl-].[Na+]")], batch_size=3)))
    assert batch.x.shape == (6, 39) and batch.edge_index.shape == (2, 4) and batch.edge_attr.shape == (4, 10)
    assert batch.y.shape == (3, 12) and batch.y_mask.shape == (3, 12)
    assert int(batch.edge_index.max()) < 3  # ethanol's edges only; the ions add none


@pytest.mark.parametrize("bad", ["C1CC", "not a smiles", "", "c1cccc1", "C(C)(C)(C)(C)C"])
def test_unparseable_smiles_give_none(bad):
    assert F.smiles_to_data(bad, [0] * 12) is None


def test_charge_radical_and_halogen_slots():
    d = F.smiles_to_data("[CH2]C(=O)[O-].ClC(Br)I")
    assert d.x[0, F.RADICAL_SLOT] == 1.0
    assert d.x[3, F.CHARGE_SLOT] == -1.0
    names = [next(n for n in slots(r) if n.startswith("element=")) for r in d.x]
    assert names == ["element=C", "element=C", "element=O", "element=O",
                     "element=Cl", "element=C", "element=Br", "element=I"]


@pytest.mark.parametrize("legacy_setting", [True, False])
def test_chirality_and_double_bond_stereo_as_trimnet(legacy_setting):
    # TrimNet relies on RDKit's legacy stereo perception (CIP labels while parsing, Z/E bonds);
    # the features must not change when the caller has switched RDKit to the new algorithm.
    before = Chem.GetUseLegacyStereoPerception()
    Chem.SetUseLegacyStereoPerception(legacy_setting)
    try:
        r = F.smiles_to_data("C[C@H](N)O")
        s = F.smiles_to_data("C[C@@H](N)O")
        e = F.smiles_to_data("C/C=C/C")
        z = F.smiles_to_data("C/C=C\\C")
        plain = F.smiles_to_data("CC(N)O")
        assert Chem.GetUseLegacyStereoPerception() == legacy_setting  # restored
    finally:
        Chem.SetUseLegacyStereoPerception(before)
    assert {"cip=R", "chirality_possible"} <= slots(r.x[1]) and "cip=S" not in slots(r.x[1])
    assert {"cip=S", "chirality_possible"} <= slots(s.x[1]) and "cip=R" not in slots(s.x[1])
    # an unspecified stereocentre: no CIP label, but RDKit still flags it as possibly chiral
    assert not any({"cip=R", "cip=S"} & slots(row) for row in plain.x)
    assert [("chirality_possible" in slots(row)) for row in plain.x] == [False, True, False, False]
    double = [i for i in range(e.edge_attr.shape[0]) if e.edge_attr[i, 1] == 1]  # type=DOUBLE
    assert len(double) == 2
    assert all(e.edge_attr[i, 9] == 1 for i in double)  # STEREOE
    assert all(z.edge_attr[i, 8] == 1 for i in double)  # STEREOZ (same edge order)


def _trimnet_reference(mol):
    """An independent, deliberately literal rendering of TrimNet's ``atom_attr`` / ``bond_attr``
    (list-of-booleans one-hots with 'unknown -> last element', the O(n^2) atom-pair loop), used as
    an oracle for the vectorised featuriser."""
    def onehot_unk(x, allowed):
        x = x if x in allowed else allowed[-1]
        return [float(x == a) for a in allowed]
    H = Chem.rdchem.HybridizationType
    atoms = []
    for a in mol.GetAtoms():
        row = (onehot_unk(a.GetSymbol(), ["B", "C", "N", "O", "F", "Si", "P", "S", "Cl", "As", "Se", "Br",
                                          "Te", "I", "At", "other"])
               + [float(a.GetDegree() == k) for k in range(11)]
               + [a.GetFormalCharge(), a.GetNumRadicalElectrons()]
               + onehot_unk(a.GetHybridization(), [H.SP, H.SP2, H.SP3, H.SP3D, H.SP3D2, "other"])
               + [float(a.GetIsAromatic())])
        cip = onehot_unk(a.GetProp("_CIPCode"), ["R", "S"]) if a.HasProp("_CIPCode") else [0.0, 0.0]
        atoms.append(row + cip + [float(a.HasProp("_ChiralityPossible"))])
    index, bonds = [], []
    n = mol.GetNumAtoms()
    B = Chem.rdchem.BondType
    for i in range(n):
        for j in range(n):
            b = mol.GetBondBetweenAtoms(i, j) if i != j else None
            if b is not None:
                t = b.GetBondType()
                bonds.append([float(t == B.SINGLE), float(t == B.DOUBLE), float(t == B.TRIPLE),
                              float(t == B.AROMATIC), float(b.GetIsConjugated()), float(b.IsInRing())]
                             + onehot_unk(str(b.GetStereo()), ["STEREONONE", "STEREOANY", "STEREOZ", "STEREOE"]))
                index.append([i, j])
    return torch.tensor(atoms), torch.tensor(index).reshape(-1, 2).t(), torch.tensor(bonds).reshape(-1, 10)


def test_matches_trimnet_featurisation_on_real_molecules(real_data_dir):
    df = load_csv(real_data_dir / "tox21" / "tox21.csv.gz")
    # 250 molecules from across the file, plus every one with a chiral centre or a stereo bond
    sample = list(df["smiles"].iloc[::31]) + [s for s in df["smiles"] if "@" in s or "/" in s][:100]
    compared = 0
    for smi in sample:
        d = F.smiles_to_data(smi)
        if d is None:
            continue
        with F.legacy_stereo():
            x, ei, ea = _trimnet_reference(Chem.MolFromSmiles(smi))
        assert torch.equal(d.x, x.float()), smi
        assert torch.equal(d.edge_index, ei.long()), smi
        assert torch.equal(d.edge_attr, ea.float()), smi
        compared += 1
    assert compared > 300


# ----------------------------------------------------------------------------------------------
# The real file, the CSV checks and the feature cache


@pytest.fixture(scope="module")
def tox21_csv(real_data_dir):
    path = real_data_dir / "tox21" / "tox21.csv.gz"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


def test_real_file_layout(tox21_csv):
    df = load_csv(tox21_csv)
    assert len(df) == 7831
    assert list(df.columns[:12]) == TASKS and list(df.columns[12:]) == ["mol_id", "smiles"]
    missing = df[TASKS].isna().to_numpy().mean()
    assert missing == pytest.approx(0.1705, abs=5e-5)
    labels = df[TASKS].to_numpy()
    assert set(np.unique(labels[~np.isnan(labels)])) == {0.0, 1.0}


def test_featurise_caches_and_never_featurises_twice(tox21_csv, tmp_path, monkeypatch):
    cache = tmp_path / "cache" / "tox21.pt"
    calls = []
    original = F.smiles_to_data

    def counting(*args, **kwargs):
        calls.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(F, "smiles_to_data", counting)
    graphs, stats = featurise(tox21_csv, cache, limit=300)
    assert len(calls) == 300
    assert stats["rows"] == 300 and stats["graphs"] + stats["skipped"] == 300 and not stats["from_cache"]
    assert len(graphs) == stats["graphs"] >= 295
    assert sorted(p.name for p in cache.parent.iterdir()) == ["tox21.pt"]  # no temporary file left
    df = load_csv(tox21_csv).iloc[:300]
    first = graphs[0]
    assert first.mol_id == df["mol_id"].iloc[0] and first.smiles == df["smiles"].iloc[0]
    assert first.y_mask.tolist() == [(~df[TASKS].iloc[0].isna()).tolist()]
    assert first.y.tolist() == [df[TASKS].iloc[0].fillna(0).tolist()]

    def boom(*args, **kwargs):
        raise AssertionError("featurised again although the cache is valid")

    monkeypatch.setattr(F, "smiles_to_data", boom)
    again, stats2 = featurise(tox21_csv, cache, limit=300)
    assert stats2["from_cache"] and stats2["graphs"] == stats["graphs"]
    assert len(again) == len(graphs)
    for a, b in zip(again[::37], graphs[::37]):
        assert torch.equal(a.x, b.x) and torch.equal(a.edge_index, b.edge_index) and torch.equal(a.y, b.y)
    # what the benchmark's load_prepared reads
    assert len(torch.load(cache, weights_only=False)["graphs"]) == len(graphs)

    # A different limit, featuriser version or source file is NOT served from this cache.
    # Each change starts from a copy of the valid cache and undoes its patch, so each check stands
    # on its own.
    for change in ("limit", "version", "source"):
        calls.clear()
        copy = shutil.copy(cache, tmp_path / f"{change}.pt")
        csv, limit = tox21_csv, 300
        with monkeypatch.context() as mp:
            mp.setattr(F, "smiles_to_data", counting)
            if change == "limit":
                limit = 20
            elif change == "version":
                mp.setattr(F, "FEATURISER_VERSION", "something-else")
            else:
                csv = tmp_path / "tox21.csv.gz"
                text = gzip.decompress(tox21_csv.read_bytes()).replace(b"TOX3021", b"TOX9999", 1)
                csv.write_bytes(gzip.compress(text))
            out, st = featurise(csv, copy, limit=limit)
        assert not st["from_cache"] and len(calls) == limit, change
        if change == "source":
            assert out[0].mol_id == "TOX9999"


def test_corrupt_cache_is_rebuilt(tox21_csv, tmp_path):
    cache = tmp_path / "c.pt"
    cache.write_bytes(b"not a torch file")
    graphs, stats = featurise(tox21_csv, cache, limit=5)
    assert not stats["from_cache"] and len(graphs) == 5
    assert featurise(tox21_csv, cache, limit=5)[1]["from_cache"]


def test_unparseable_rows_are_skipped_and_counted(tmp_path, caplog):
    rows = ["0,,,,,,,,,,,1,A,CCO", "1,,,,,,,,,,,0,B,C1CC", ",,,,,,,,,,,,C,[Na+]", "0,,,,,,,,,,,1,D,c1ccccc1"]
    csv = tmp_path / "small.csv"
    csv.write_text(",".join(TASKS + ["mol_id", "smiles"]) + "\n" + "\n".join(rows) + "\n")
    with caplog.at_level("WARNING"):
        graphs, stats = featurise(csv, tmp_path / "small.pt")
    assert [g.mol_id for g in graphs] == ["A", "C", "D"]
    assert stats["skipped"] == 1 and stats["skipped_molecules"] == [(1, "B", "C1CC")]
    assert stats["no_bonds"] == 1
    assert "skipped 1 of 4 SMILES" in caplog.text and "C1CC" in caplog.text


def _write_csv(path, header, rows):
    path.write_text(",".join(header) + "\n" + "\n".join(rows) + "\n")
    return path


def test_load_csv_errors_name_the_file_and_the_fix(tox21_csv, tmp_path):
    with pytest.raises(DataError) as err:
        load_csv(tmp_path / "nope" / "tox21.csv.gz")
    assert str(tmp_path / "nope" / "tox21.csv.gz") in str(err.value)
    assert "python -m experiments download tox21" in str(err.value) and tdata.SOURCE_URL in str(err.value)

    garbage = tmp_path / "garbage.csv.gz"
    garbage.write_bytes(b"this is not gzip at all")
    truncated = tmp_path / "truncated.csv.gz"
    truncated.write_bytes(tox21_csv.read_bytes()[:5000])
    for bad in (garbage, truncated):
        with pytest.raises(DataError) as err:
            load_csv(bad)
        assert f"cannot read {bad}" in str(err.value) and f"delete {bad}" in str(err.value)

    wrong_cols = _write_csv(tmp_path / "cols.csv", TASKS[:-1] + ["mol_id", "smiles"], ["," * 11 + "A,CCO"])
    with pytest.raises(DataError, match=r"columns \['SR-p53'\] are missing") as err:
        load_csv(wrong_cols)
    assert str(wrong_cols) in str(err.value)

    bad_label = _write_csv(tmp_path / "labels.csv", TASKS + ["mol_id", "smiles"], ["2" + "," * 11 + ",A,CCO"])
    with pytest.raises(DataError, match="column NR-AR has 1 values other than 0, 1 or empty"):
        load_csv(bad_label)

    empty = _write_csv(tmp_path / "empty.csv", TASKS + ["mol_id", "smiles"], [])
    with pytest.raises(DataError, match="no molecules"):
        load_csv(empty)


# ----------------------------------------------------------------------------------------------
# Split and class weights


def test_split_is_seeded_disjoint_covering_80_10_10():
    n = 7831
    a = split_indices(n, seed=3)
    b = split_indices(n, seed=3)
    c = split_indices(n, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    assert [len(p) for p in a] == [6264, 783, 784]  # int(0.8 n), int(0.1 n), the rest
    allidx = np.concatenate(a)
    assert len(np.unique(allidx)) == n and allidx.min() == 0 and allidx.max() == n - 1
    assert a[0].dtype == np.int64
    assert [len(p) for p in split_indices(100, 0, (0.7, 0.29, 0.01))] == [70, 29, 1]
    with pytest.raises(ValueError):
        split_indices(10, 0, (0.8, 0.1, 0.2))


def test_class_weights_follow_trimnet_on_the_training_split_only():
    # task 0: training rows 3 negatives, 1 positive, 1 missing; the other rows are all positive
    labels = np.full((8, 12), 0.0)
    labels[:, 1:] = np.nan
    labels[:, 0] = [0, 0, 1, 0, NAN, 1, 1, 1]
    labels[:, 1] = [1, 0, NAN, NAN, NAN, 0, 0, 0]
    train = np.array([0, 1, 2, 3, 4])
    w = class_weights(labels, train)
    assert w.shape == (12, 2) and w.dtype == torch.float32
    assert w[0].tolist() == pytest.approx([4 / 3, 4.0])  # (n_neg + n_pos) / n_neg, ... / n_pos
    assert w[1].tolist() == pytest.approx([2.0, 2.0])
    assert w[2].tolist() == [0.0, 0.0]  # no training label at all: weight 0 (with a warning)
    everything = class_weights(labels, None)  # TrimNet's own choice: all rows
    assert everything[0].tolist() == pytest.approx([7 / 3, 7 / 4])
    # the same from graphs and from (y, mask)
    graphs = [F.smiles_to_data("C", row) for row in labels]
    assert torch.equal(class_weights(graphs, train), w)
    y, mask = np.nan_to_num(labels), ~np.isnan(labels)
    assert torch.equal(class_weights((y, mask), train), w)


def test_class_weights_on_real_split(tox21_csv):
    df = load_csv(tox21_csv)
    train, _, _ = split_indices(len(df), seed=0)
    w = class_weights(df[TASKS].to_numpy(), train).double()
    sub = df.iloc[train]
    for t, task in enumerate(TASKS):
        pos, neg = int((sub[task] == 1).sum()), int((sub[task] == 0).sum())
        assert w[t].tolist() == pytest.approx([(pos + neg) / neg, (pos + neg) / pos], rel=1e-6)
    assert (w[:, 1] > w[:, 0]).all()  # positives are the rare class in every Tox21 task


# ----------------------------------------------------------------------------------------------
# Metric


def _sklearn_masked_mean(y, s, m):
    aucs = []
    for t in range(y.shape[1]):
        yt, st = y[m[:, t], t], s[m[:, t], t]
        if len(np.unique(yt)) == 2:
            aucs.append(roc_auc_score(yt, st))
    return float(np.mean(aucs))


@pytest.mark.parametrize("seed", range(5))
def test_masked_auc_matches_sklearn_with_ties_and_masks(seed):
    rng = np.random.default_rng(seed)
    n, t = 300, 12
    y = (rng.random((n, t)) < rng.uniform(0.03, 0.5, size=t)).astype(np.float64)
    scores = np.round(rng.random((n, t)) + 0.3 * y, 1)  # rounding -> many ties
    mask = rng.random((n, t)) > 0.17
    mask[:, 11] &= y[:, 11] == 0  # task 11: one class only among labelled rows -> skipped
    got = masked_mean_roc_auc(torch.tensor(y), torch.tensor(scores), torch.tensor(mask))
    assert got == pytest.approx(_sklearn_masked_mean(y, scores, mask), abs=1e-12)
    # the masked rows play no part: scramble their labels and scores
    y2, s2 = y.copy(), scores.copy()
    y2[~mask] = 1 - y2[~mask]
    s2[~mask] = rng.random(int((~mask).sum()))
    assert masked_mean_roc_auc(y2, s2, mask) == pytest.approx(got, abs=1e-12)
    # and it does not matter whether the mask is bool or 0/1 float
    assert masked_mean_roc_auc(y, scores, mask.astype(np.float32)) == pytest.approx(got, abs=1e-12)


def test_auc_edge_cases():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert roc_auc([0, 1, 1], [0.2, 0.2, 0.9]) == 0.75  # a tie across classes counts one half
    assert math.isnan(roc_auc([1, 1, 1], [0.1, 0.2, 0.3]))
    y = np.zeros((4, 12))
    assert math.isnan(masked_mean_roc_auc(y, np.random.rand(4, 12), np.ones((4, 12))))
    with pytest.raises(ValueError):
        masked_mean_roc_auc(y, np.zeros((4, 11)), np.ones((4, 12)))


# ----------------------------------------------------------------------------------------------
# Loss


def _example(seed=0, n=16, t=12):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, t, 2, generator=g, dtype=torch.float64, requires_grad=True)
    y = (torch.rand(n, t, generator=g) < 0.3).double()
    mask = torch.rand(n, t, generator=g) > 0.3
    w = 1 + 5 * torch.rand(t, 2, generator=g, dtype=torch.float64)
    return logits, y, mask, w


def test_loss_matches_its_definition():
    logits, y, mask, w = _example()
    total, count = 0.0, 0
    for i in range(y.shape[0]):
        for t in range(y.shape[1]):
            if mask[i, t]:
                c = int(y[i, t])
                total += w[t, c] * (torch.logsumexp(logits[i, t], 0) - logits[i, t, c])
                count += 1
    got = masked_class_weighted_loss(logits, y, mask, w)
    assert got.item() == pytest.approx((total / count).item(), rel=1e-12)
    flat = masked_class_weighted_loss(logits.reshape(16, 24), y, mask, w)  # TrimNet's flat layout
    assert flat.item() == pytest.approx(got.item(), rel=1e-12)


def test_trimnet_reduction_equals_its_per_task_cross_entropy():
    logits, y, mask, w = _example(1)
    mask[:, 5] = False  # a task with no label in the batch is skipped, as in TrimNet's trainer
    expected = 0.0
    for t in range(12):
        rows = mask[:, t]
        if rows.any():
            expected += torch.nn.CrossEntropyLoss(weight=w[t])(logits[rows, t], y[rows, t].long())
    got = masked_class_weighted_loss(logits.reshape(16, 24), y, mask, w, reduction="trimnet")
    assert got.item() == pytest.approx(expected.item(), rel=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "trimnet"])
def test_masked_labels_change_nothing(reduction):
    logits, y, mask, w = _example(2)
    base = masked_class_weighted_loss(logits, y, mask, w, reduction=reduction)
    (grad,) = torch.autograd.grad(base, logits)
    for fill in (0.0, 1.0, 6.0, NAN):  # 6 is TrimNet's own "missing" code
        y2 = torch.where(mask, y, torch.full_like(y, fill))
        other = masked_class_weighted_loss(logits, y2, mask, w, reduction=reduction)
        (grad2,) = torch.autograd.grad(other, logits)
        assert other.item() == base.item()
        assert torch.equal(grad, grad2)
    assert (grad[~mask] == 0).all() and (grad[mask] != 0).any()
    # but a present label does matter
    y3 = y.clone()
    i, t = torch.nonzero(mask)[0].tolist()
    y3[i, t] = 1 - y3[i, t]
    assert masked_class_weighted_loss(logits, y3, mask, w, reduction=reduction).item() != base.item()


def test_loss_uses_the_class_weights():
    logits, y, mask, w = _example(3)
    base = masked_class_weighted_loss(logits, y, mask, w)
    w2 = w.clone()
    w2[0, 1] *= 10  # task 0's positives
    has_pos0 = bool(((y[:, 0] == 1) & mask[:, 0]).any())
    assert has_pos0
    assert masked_class_weighted_loss(logits, y, mask, w2).item() > base.item()


def test_loss_without_any_label_is_zero_and_backpropagates():
    logits, y, mask, w = _example(4)
    loss = masked_class_weighted_loss(logits, y, torch.zeros_like(mask), w)
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None and (logits.grad == 0).all()
