"""EMNIST runs: the seeded validation/test split, augmentation only where it belongs, stale caches.

Built on a small synthetic prepared cache (random images), so nothing here needs the real data.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from experiments import config as cfgmod
from experiments.emnist import data
from experiments.emnist.benchmark import BENCHMARK, CACHE_FORMAT, split_seed
from experiments.grid import Run
from experiments.registry import EpochContext, StaleCacheError
from pb_core.records import atomic_torch_save

N_TRAIN, N_TEST = 150, 100


@pytest.fixture(scope="module")
def cfg():
    return cfgmod.load_config()


def write_cache(path, data_settings, n_train=N_TRAIN, n_test=N_TEST):
    gen = torch.Generator().manual_seed(1)
    blob = {"format": CACHE_FORMAT, "settings": {"package": "emnist", "data": data_settings},
            "train_images": torch.randint(0, 256, (n_train, 28, 28), dtype=torch.uint8, generator=gen),
            "train_labels": torch.randint(0, 47, (n_train,), generator=gen),
            "train_index": torch.arange(n_train),
            "test_images": torch.randint(0, 256, (n_test, 28, 28), dtype=torch.uint8, generator=gen),
            "test_labels": torch.randint(0, 47, (n_test,), generator=gen),
            "test_index": torch.arange(5000, 5000 + n_test),  # official indices need not start at 0
            "classes": data.balanced_classes()}
    atomic_torch_save(blob, path)
    return blob


def settings_for(cfg, variant, seed, **data_changes):
    settings = cfgmod.run_settings(cfg, Run("emnist", variant, seed))
    settings["data"].update(data_changes)
    return settings


def build(tmp_path, settings):
    cache = tmp_path / "prepared.pt"
    if not cache.exists():
        write_cache(cache, settings["data"])
    return BENCHMARK.build(settings, cache, "cpu")


# ---------------------------------------------------------------------------------------------- split
@pytest.mark.parametrize("n", [18_800, 304, 7])
def test_split_is_disjoint_covers_the_test_set_and_halves_it(n):
    val, test = data.split_official_test(n, seed=3, val_fraction=0.5)
    assert len(set(val.tolist()) & set(test.tolist())) == 0
    assert sorted(val.tolist() + test.tolist()) == list(range(n))
    assert len(val) == n // 2
    again = data.split_official_test(n, seed=3, val_fraction=0.5)
    assert torch.equal(val, again[0]) and torch.equal(test, again[1])
    assert not torch.equal(val, data.split_official_test(n, seed=4, val_fraction=0.5)[0])


def test_every_variant_of_a_seed_validates_and_tests_on_the_same_images(tmp_path, cfg):
    variants = cfg["benchmarks"]["emnist"]["variants"]
    assert len(variants) == 8
    digests = {v: build(tmp_path, settings_for(cfg, v, 3)).extra["split_digest"] for v in variants}
    assert len(set(digests.values())) == 1, digests
    other_seed = build(tmp_path, settings_for(cfg, "pb", 4)).extra
    assert other_seed["split_digest"] != digests["pb"] and other_seed["split_seed"] == 4
    # The digest is that of the official indices the split puts into validation.
    val, _ = data.split_official_test(N_TEST, 3, 0.5)
    expected = build(tmp_path, settings_for(cfg, "pb", 3)).extra
    assert expected["val_images"] == len(val) and expected["test_images"] == N_TEST - len(val)


def test_a_fixed_split_seed_gives_every_seed_the_same_split(tmp_path, cfg):
    s3, s5 = settings_for(cfg, "pb", 3, split_seed=11), settings_for(cfg, "baseline", 5, split_seed=11)
    assert split_seed(s3) == split_seed(s5) == 11
    assert build(tmp_path, s3).extra["split_digest"] == build(tmp_path, s5).extra["split_digest"]


def test_evaluation_scores_exactly_the_split_images(tmp_path, cfg):
    settings = settings_for(cfg, "pb", 2)
    blob = write_cache(tmp_path / "prepared.pt", settings["data"])
    exp = BENCHMARK.build(settings, tmp_path / "prepared.pt", "cpu")
    val, test = data.split_official_test(N_TEST, 2, 0.5)

    class Oracle(nn.Module):
        """Predicts the right label for the validation images only (it knows them by their pixels)."""
        def __init__(self):
            super().__init__()
            self.known = {inputs_key(x): int(blob["test_labels"][i]) for i, x in zip(val, blob["test_images"][val])}

        def forward(self, x):
            logits = torch.zeros(len(x), 47)
            for row, image in enumerate(x):
                label = self.known.get(inputs_key(image), 0)
                logits[row, label] = 1.0 if label else 0.0
            return logits

    train_acc, val_acc, test_acc = exp.evaluate(Oracle())
    assert val_acc == 1.0
    expected_test = int((blob["test_labels"][test] == 0).sum()) / len(test)
    assert math.isclose(test_acc, expected_test)


def inputs_key(image: torch.Tensor) -> bytes:
    """A key of an image, raw (uint8, 28x28) or as the network sees it (normalised float, 1x28x28)."""
    if image.dtype == torch.uint8:
        image = data.InputPipeline(0.1307, 0.3081, None)(image.unsqueeze(0), augment=False)[0]
    return image.reshape(-1).to(torch.float32).numpy().round(4).tobytes()


def test_the_width_factor_builds_the_widened_cnn_and_width_1_is_the_default(tmp_path, cfg):
    import pb_core
    from experiments.emnist.model import MnistNet

    default = settings_for(cfg, "baseline", 0)
    assert default["factors"] == {}
    torch.manual_seed(0)
    plain = build(tmp_path, default).model
    one = dict(default, factors={"width": 1})
    torch.manual_seed(0)
    at_one = build(tmp_path, one).model
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), at_one.state_dict().values()))
    wide = build(tmp_path, dict(default, factors={"width": 2}))
    assert pb_core.count_parameters(wide.model) == pb_core.count_parameters(MnistNet(width=2)) > \
        pb_core.count_parameters(plain)
    assert wide.extra["width"] == 2


# ---------------------------------------------------------------------------------------------- augmentation
class Recorder(nn.Module):
    """A trainable stand-in for the network that keeps every input it is given."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(28 * 28, 47)
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.fc(x.flatten(1))


def plain_inputs(images):
    return data.InputPipeline(0.1307, 0.3081, None)(images, augment=False)


def fraction_unaugmented(seen, plain):
    """Share of the recorded inputs that equal some un-augmented input exactly."""
    flat = plain.flatten(1)
    inputs = torch.cat(seen).flatten(1)
    distance = torch.cdist(inputs, flat, compute_mode="donot_use_mm_for_euclid_dist")
    return float((distance.min(1).values < 1e-4).float().mean())


@pytest.mark.parametrize("augment_dendrite_phase", [False, True])
def test_augmentation_only_in_training_and_never_at_evaluation(tmp_path, cfg, augment_dendrite_phase):
    settings = settings_for(cfg, "pb", 0)
    settings["train"]["augment_dendrite_phase"] = augment_dendrite_phase
    blob = write_cache(tmp_path / "prepared.pt", settings["data"])
    exp = BENCHMARK.build(settings, tmp_path / "prepared.pt", "cpu")
    plain_train = plain_inputs(blob["train_images"])
    model = Recorder()
    optimizer = exp.optimizer_factory(model.parameters())

    model.train()
    exp.train_epoch(model, optimizer, EpochContext("neuron", 0, 1))
    assert sum(len(x) for x in model.seen) == N_TRAIN
    assert fraction_unaugmented(model.seen, plain_train) == 0.0

    model.seen.clear()
    exp.train_epoch(model, optimizer, EpochContext("dendrite", 1, 2))
    assert fraction_unaugmented(model.seen, plain_train) == (0.0 if augment_dendrite_phase else 1.0)

    model.seen.clear()
    model.eval()
    exp.evaluate(model)
    plain_all = torch.cat([plain_train, plain_inputs(blob["test_images"])])
    assert sum(len(x) for x in model.seen) == N_TRAIN + N_TEST
    assert fraction_unaugmented(model.seen, plain_all) == 1.0


def test_random_affine_without_geometry_is_the_identity():
    x = torch.rand(4, 1, 28, 28)
    assert torch.allclose(data.random_affine(x, rotations=(), zoom=1.0, translate=0.0), x, atol=1e-5)


def test_zoom_is_the_papers_center_crop_and_resize():
    from torchvision.transforms.v2 import functional as TF
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 6:22, 9:19] = torch.rand(16, 10)
    ours = data.random_affine(x, rotations=(), zoom=28 / 26, translate=0.0)
    theirs = TF.resize(TF.center_crop(x, [26, 26]), [28, 28], antialias=False)
    assert (ours - theirs).abs().max() < 0.08  # interpolation grids differ by a fraction of a pixel
    assert (ours - x).abs().max() > 0.3        # and the zoom is real


def bar_angle(image: torch.Tensor) -> float:
    """Orientation (degrees) of the main axis of a bright shape, from its second moments."""
    h, w = image.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    m = image.double() / image.sum()
    cx, cy = (m * xs).sum(), (m * ys).sum()
    cxx, cyy, cxy = (m * (xs - cx) ** 2).sum(), (m * (ys - cy) ** 2).sum(), (m * (xs - cx) * (ys - cy)).sum()
    return math.degrees(0.5 * math.atan2(2 * cxy, cxx - cyy))


def test_rotations_stay_within_the_sum_of_the_ranges():
    torch.manual_seed(0)
    bar = torch.zeros(512, 1, 28, 28)
    bar[:, 0, 13:15, 4:24] = 1.0  # horizontal: angle 0
    angles = torch.tensor([bar_angle(img[0]) for img in data.random_affine(bar, rotations=(10, 5))])
    assert angles.abs().max() <= 15.5
    assert angles.abs().max() > 12.0           # both ranges are used
    assert (angles.abs() > 1.0).float().mean() > 0.8
    assert abs(float(angles.mean())) < 1.5     # symmetric


# ---------------------------------------------------------------------------------------------- caches
def test_a_cache_made_with_other_data_settings_is_stale(tmp_path, cfg):
    settings = settings_for(cfg, "pb", 0)
    write_cache(tmp_path / "prepared.pt", {**settings["data"], "val_fraction": 0.3})
    with pytest.raises(StaleCacheError, match="python -m experiments prepare emnist"):
        BENCHMARK.build(settings, tmp_path / "prepared.pt", "cpu")
    with pytest.raises(StaleCacheError, match="missing"):
        BENCHMARK.build(settings, tmp_path / "absent.pt", "cpu")


def test_training_decreases_the_loss_with_the_real_loop(tmp_path, cfg):
    """The loop trains: a few epochs on 150 images of 3 classes drive the loss down."""
    settings = settings_for(cfg, "baseline", 0)
    cache = tmp_path / "prepared.pt"
    blob = write_cache(cache, settings["data"])
    blob["train_labels"] = blob["train_labels"] % 3
    atomic_torch_save(blob, cache)
    torch.manual_seed(0)
    exp = BENCHMARK.build(settings, cache, "cpu")
    optimizer = exp.optimizer_factory(exp.model.parameters())
    exp.model.train()
    losses = [exp.train_epoch(exp.model, optimizer, EpochContext("neuron", e, 1)) for e in range(3)]
    assert losses[-1] < losses[0]
    assert all(math.isfinite(v) for v in losses)
    assert F.cross_entropy(torch.zeros(1, 47), torch.tensor([0])).item() > losses[-1]


class ModeDependent(nn.Module):
    """Predicts class 0 in training mode and class 1 in eval mode."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(()))
        self.seen = 0

    def forward(self, x):
        self.seen += len(x)
        logits = torch.zeros(len(x), 47) + 0 * self.bias
        logits[:, 0 if self.training else 1] = 1.0
        return logits


@pytest.mark.parametrize("train_score", ["eval", "running"])
def test_train_score_is_the_eval_pass_or_the_training_pass(tmp_path, cfg, train_score):
    settings = settings_for(cfg, "pb", 0)
    settings["train"]["train_score"] = train_score
    blob = write_cache(tmp_path / "prepared.pt", settings["data"])
    exp = BENCHMARK.build(settings, tmp_path / "prepared.pt", "cpu")
    model = ModeDependent()
    model.train()
    exp.train_epoch(model, exp.optimizer_factory(model.parameters()), EpochContext("neuron", 0, 1))
    model.eval()
    model.seen = 0
    train, _, _ = exp.evaluate(model)
    labels = blob["train_labels"]
    if train_score == "running":  # the training pass's hits (mode train: class 0); train images not scored
        assert train == int((labels == 0).sum()) / N_TRAIN and model.seen == N_TEST
    else:
        assert train == int((labels == 1).sum()) / N_TRAIN and model.seen == N_TRAIN + N_TEST


def test_the_protocols_optimizer_and_schedule(tmp_path, cfg):
    """Adadelta lr 1.0 and StepLR gamma 0.7; dendrite phases use the pb block's candidate_optimizer (the
    runner passes it to pb_core; tests/test_runner.py checks that), so the benchmark sets none of its own."""
    exp = build(tmp_path, settings_for(cfg, "pb", 0))
    assert exp.candidate_optimizer_factory is None
    optimizer = exp.optimizer_factory([nn.Parameter(torch.zeros(2))])
    assert isinstance(optimizer, torch.optim.Adadelta) and optimizer.param_groups[0]["lr"] == 1.0
    scheduler = exp.scheduler_factory(optimizer)
    assert isinstance(scheduler, torch.optim.lr_scheduler.StepLR) and scheduler.gamma == 0.7
