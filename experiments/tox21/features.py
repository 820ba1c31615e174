"""SMILES -> PyTorch Geometric graph with TrimNet's own atom and bond features.

This follows TrimNet's featurisation (repository ``yvquanli/TrimNet``, file
``trimnet_drug/source/dataset.py``: ``atom_attr`` called with its defaults ``explicit_H=True,
use_chirality=True``, and ``bond_attr`` with ``use_chirality=True``) slot for slot, so that the
replicated baseline sees the same inputs as the published one. The code is our own.

Atom features, 39 per heavy atom (``x``, float32):

====== ========================================================================================
slots  meaning
====== ========================================================================================
0-15   element one-hot: B, C, N, O, F, Si, P, S, Cl, As, Se, Br, Te, I, At, other (any other
       element, e.g. Na, H, Fe, goes to slot 15)
16-26  degree one-hot, ``atom.GetDegree()`` = 0 .. 10 (explicit neighbours; implicit H not counted)
27     formal charge (an integer, not one-hot)
28     number of radical electrons (an integer)
29-34  hybridisation one-hot: SP, SP2, SP3, SP3D, SP3D2, other (S, UNSPECIFIED, ... -> slot 34)
35     aromatic (0/1)
36-37  CIP label one-hot from RDKit's ``_CIPCode``: R, S. No label -> both 0. Any label other than
       "R" goes to the S slot: TrimNet one-hot-encodes with "unknown -> last element" and "S" is the
       last element of its list; we keep that quirk.
38     ``_ChiralityPossible`` flag set by RDKit's (legacy) stereo perception (0/1): the atom is a
       possible stereocentre, whether or not the SMILES specifies its configuration
====== ========================================================================================

TrimNet adds a total-H-count one-hot only when ``explicit_H=False`` (its QM8/QM9 path); with the
default used for Tox21 there is NO hydrogen-count feature, which is why the width is 39
(16 + 11 + 2 + 6 + 1 + 2 + 1).

Bond features, 10 per directed edge (``edge_attr``, float32):

====== ========================================================================================
0-3    bond type: SINGLE, DOUBLE, TRIPLE, AROMATIC (other types, e.g. DATIVE, are all zero, as in
       TrimNet, which compares with each of the four)
4      conjugated (0/1)
5      in a ring (0/1)
6-9    stereo one-hot: STEREONONE, STEREOANY, STEREOZ, STEREOE; any other value (STEREOCIS,
       STEREOTRANS, ...) goes to the last slot (TrimNet's "unknown -> last element")
====== ========================================================================================

Every bond is stored in both directions; the edges are ordered by (source, target), the order in
which TrimNet's double loop over atom pairs emits them. A molecule without bonds (a single ion such
as ``[Na+]``, a salt written as separate ions, a lone metal atom) gets
``edge_index`` of shape (2, 0) and ``edge_attr`` of shape (0, 10) (TrimNet's own code would build a
malformed tensor there).

Stereo perception: RDKit can perceive stereochemistry with its legacy code or with the newer
algorithm (``Chem.SetUseLegacyStereoPerception``, or the ``RDK_USE_LEGACY_STEREO_PERCEPTION``
environment variable). Only the legacy code sets ``_CIPCode`` while parsing, and the new one labels
double bonds STEREOCIS/STEREOTRANS instead of STEREOZ/STEREOE; TrimNet was written against the
legacy behaviour, so :func:`smiles_to_data` parses with legacy perception switched on (and restores
the caller's setting afterwards).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import numpy as np
import torch
from rdkit import Chem, rdBase
from torch_geometric.data import Data

# Bump whenever the features change: cached graphs made by another version are recomputed.
FEATURISER_VERSION = "trimnet-dataset.py-v1"

ELEMENTS = ("B", "C", "N", "O", "F", "Si", "P", "S", "Cl", "As", "Se", "Br", "Te", "I", "At")
MAX_DEGREE = 10
HYBRIDISATIONS = (
    Chem.rdchem.HybridizationType.SP,
    Chem.rdchem.HybridizationType.SP2,
    Chem.rdchem.HybridizationType.SP3,
    Chem.rdchem.HybridizationType.SP3D,
    Chem.rdchem.HybridizationType.SP3D2,
)
BOND_TYPES = (
    Chem.rdchem.BondType.SINGLE,
    Chem.rdchem.BondType.DOUBLE,
    Chem.rdchem.BondType.TRIPLE,
    Chem.rdchem.BondType.AROMATIC,
)
BOND_STEREO = ("STEREONONE", "STEREOANY", "STEREOZ", "STEREOE")

ATOM_FEATURE_NAMES = (
    [f"element={e}" for e in ELEMENTS] + ["element=other"]
    + [f"degree={d}" for d in range(MAX_DEGREE + 1)]
    + ["formal_charge", "radical_electrons"]
    + [f"hybridisation={h}" for h in ("SP", "SP2", "SP3", "SP3D", "SP3D2")] + ["hybridisation=other"]
    + ["aromatic", "cip=R", "cip=S", "chirality_possible"]
)
BOND_FEATURE_NAMES = (
    ["type=SINGLE", "type=DOUBLE", "type=TRIPLE", "type=AROMATIC", "conjugated", "in_ring"]
    + [f"stereo={s}" for s in BOND_STEREO]
)
NUM_ATOM_FEATURES = len(ATOM_FEATURE_NAMES)
NUM_BOND_FEATURES = len(BOND_FEATURE_NAMES)
assert NUM_ATOM_FEATURES == 39 and NUM_BOND_FEATURES == 10  # TrimNet's widths (model.py expects them)

# Slot offsets, for readers and tests.
ELEMENT_SLOT = 0
DEGREE_SLOT = ELEMENT_SLOT + len(ELEMENTS) + 1         # 16
CHARGE_SLOT = DEGREE_SLOT + MAX_DEGREE + 1             # 27
RADICAL_SLOT = CHARGE_SLOT + 1                         # 28
HYBRID_SLOT = RADICAL_SLOT + 1                         # 29
AROMATIC_SLOT = HYBRID_SLOT + len(HYBRIDISATIONS) + 1  # 35
CIP_SLOT = AROMATIC_SLOT + 1                           # 36 (R), 37 (S)
CHIRAL_POSSIBLE_SLOT = CIP_SLOT + 2                    # 38

_ELEMENT_INDEX = {e: i for i, e in enumerate(ELEMENTS)}
_HYBRID_INDEX = {h: i for i, h in enumerate(HYBRIDISATIONS)}
_BOND_INDEX = {b: i for i, b in enumerate(BOND_TYPES)}
_STEREO_INDEX = {s: i for i, s in enumerate(BOND_STEREO)}


class FeaturisationError(ValueError):
    """A parsed molecule that TrimNet's featurisation cannot encode (an atom of degree > 10)."""


def atom_features(atom: Chem.Atom) -> np.ndarray:
    """The 39 TrimNet features of one atom (see the module docstring for the slots)."""
    f = np.zeros(NUM_ATOM_FEATURES, dtype=np.float32)
    f[ELEMENT_SLOT + _ELEMENT_INDEX.get(atom.GetSymbol(), len(ELEMENTS))] = 1.0
    degree = atom.GetDegree()
    if degree > MAX_DEGREE:
        # TrimNet's strict one-hot raises here too; we let the caller skip the molecule instead.
        raise FeaturisationError(f"atom {atom.GetIdx()} ({atom.GetSymbol()}) has degree {degree} > {MAX_DEGREE}")
    f[DEGREE_SLOT + degree] = 1.0
    f[CHARGE_SLOT] = atom.GetFormalCharge()
    f[RADICAL_SLOT] = atom.GetNumRadicalElectrons()
    f[HYBRID_SLOT + _HYBRID_INDEX.get(atom.GetHybridization(), len(HYBRIDISATIONS))] = 1.0
    f[AROMATIC_SLOT] = float(atom.GetIsAromatic())
    if atom.HasProp("_CIPCode"):
        f[CIP_SLOT + (0 if atom.GetProp("_CIPCode") == "R" else 1)] = 1.0
    f[CHIRAL_POSSIBLE_SLOT] = float(atom.HasProp("_ChiralityPossible"))
    return f


def bond_features(bond: Chem.Bond) -> np.ndarray:
    """The 10 TrimNet features of one bond (the same for both directions)."""
    f = np.zeros(NUM_BOND_FEATURES, dtype=np.float32)
    kind = _BOND_INDEX.get(bond.GetBondType())
    if kind is not None:
        f[kind] = 1.0
    f[4] = float(bond.GetIsConjugated())
    f[5] = float(bond.IsInRing())
    f[6 + _STEREO_INDEX.get(str(bond.GetStereo()), len(BOND_STEREO) - 1)] = 1.0
    return f


def mol_to_graph(mol: Chem.Mol) -> Data:
    """``Data(x, edge_index, edge_attr)`` of an RDKit molecule (heavy atoms as RDKit stores them)."""
    n = mol.GetNumAtoms()
    x = np.stack([atom_features(a) for a in mol.GetAtoms()]) if n else np.zeros((0, NUM_ATOM_FEATURES), np.float32)
    src, dst, attrs = [], [], []
    for bond in mol.GetBonds():
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        feats = bond_features(bond)
        src += [i, j]
        dst += [j, i]
        attrs += [feats, feats]
    if src:
        order = np.lexsort((np.asarray(dst), np.asarray(src)))  # by source, then target (TrimNet's order)
        edge_index = torch.as_tensor(np.stack([np.asarray(src)[order], np.asarray(dst)[order]]), dtype=torch.long)
        edge_attr = torch.as_tensor(np.stack(attrs)[order], dtype=torch.float32)
    else:
        edge_index = torch.zeros((2, 0), dtype=torch.long)
        edge_attr = torch.zeros((0, NUM_BOND_FEATURES), dtype=torch.float32)
    return Data(x=torch.as_tensor(x, dtype=torch.float32), edge_index=edge_index, edge_attr=edge_attr,
                num_nodes=n)


@contextlib.contextmanager
def legacy_stereo() -> Iterator[None]:
    """Parse with RDKit's legacy stereo perception (what TrimNet's features assume), then restore."""
    before = Chem.GetUseLegacyStereoPerception()
    Chem.SetUseLegacyStereoPerception(True)
    try:
        yield
    finally:
        Chem.SetUseLegacyStereoPerception(before)


def parse_smiles(smiles: str) -> Chem.Mol | None:
    """RDKit molecule, or None when RDKit cannot parse (or sanitise) the SMILES; RDKit's own error
    messages are silenced because the caller reports the skipped SMILES itself."""
    if not isinstance(smiles, str) or not smiles.strip():
        return None
    with legacy_stereo(), rdBase.BlockLogs():
        return Chem.MolFromSmiles(smiles)


def labels_to_tensors(labels: Sequence[float] | None, num_tasks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y, y_mask)``, both of shape (1, num_tasks): y = label with missing (NaN) replaced by 0,
    y_mask = True where the label is present. The leading 1 makes PyG stack graphs into (B, T)."""
    if labels is None:
        values = np.full(num_tasks, np.nan)
    else:
        values = np.asarray(labels, dtype=np.float64).reshape(-1)
        if values.shape[0] != num_tasks:
            raise ValueError(f"expected {num_tasks} labels, got {values.shape[0]}")
    present = ~np.isnan(values)
    y = torch.as_tensor(np.where(present, values, 0.0), dtype=torch.float32).view(1, num_tasks)
    return y, torch.as_tensor(present, dtype=torch.bool).view(1, num_tasks)


def smiles_to_data(smiles: str, labels: Sequence[float] | None = None, mol_id: str | None = None,
                   num_tasks: int = 12) -> Data | None:
    """One molecule as a PyG ``Data``, or None when the SMILES cannot be parsed or encoded.

    Attributes: ``x`` (num_atoms, 39) float32, ``edge_index`` (2, 2*num_bonds) long, ``edge_attr``
    (2*num_bonds, 10) float32, ``y`` (1, num_tasks) float32 (missing -> 0), ``y_mask`` (1, num_tasks)
    bool (True = label present), ``smiles`` (str, as given), ``mol_id`` (str or None).
    """
    mol = parse_smiles(smiles)
    if mol is None or mol.GetNumAtoms() == 0:
        return None
    try:
        data = mol_to_graph(mol)
    except FeaturisationError:
        return None
    data.y, data.y_mask = labels_to_tensors(labels, num_tasks)
    data.smiles = smiles
    data.mol_id = mol_id
    return data

