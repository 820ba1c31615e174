#!/usr/bin/env bash
# Prepares, on the developer's machine, what the GPU check needs on a lent device machine (docs/gpu.md):
#  * the Python packages the device's image lacks, as wheels for its Python 3.12 (rdkit for Tox21's molecules,
#    jsonschema and its dependencies for the configuration's schema), in benchmarks/out/device/wheels;
#  * a link benchmarks/out/device/data -> the real data folder, so that `carry` sends the files named through it
#    (the data is never copied into the repository; benchmarks/out/ is ignored by git).
# Then prints the sizes that travel (the device tool's limit is 64 MiB in all).
#
#     bash benchmarks/gpu_prepare.sh [DATA_DIR]        # DATA_DIR: default ../shared/data
set -euo pipefail
cd "$(dirname "$0")/.."
data="$(cd "${1:-../shared/data}" && pwd)"
dev=benchmarks/out/device
mkdir -p "$dev/wheels"
# The versions this project's environment has (environment.yml / the venv); all binary, for CPython 3.12.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$dev/wheels" rdkit==2026.9.1 jsonschema==4.26.0 referencing==0.37.0 \
    jsonschema-specifications==2025.9.1 rpds-py==2026.9.1
ln -sfn "$data" "$dev/data"
for f in tox21/tox21.csv.gz physionet2012/set-a.tar.gz physionet2012/Outcomes-a.txt; do
    [ -f "$dev/data/$f" ] || { echo "missing $data/$f: the GPU check times Tox21 and PhysioNet on it" >&2; exit 1; }
done
tree_bytes=$(git ls-files -co --exclude-standard -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
carry_bytes=$(du -cbL "$dev/wheels" "$dev/data/tox21" "$dev/data/physionet2012/set-a.tar.gz" \
    "$dev/data/physionet2012/Outcomes-a.txt" | tail -1 | cut -f1)
echo "working tree $((tree_bytes / 1048576)) MiB + carried $((carry_bytes / 1048576)) MiB (limit 64 MiB)"
