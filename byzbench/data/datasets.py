"""Registered datasets: digits (bundled), synthetic, MNIST, Fashion-MNIST and CIFAR-10.

``digits`` and ``synthetic`` need no files. The three vision datasets read their standard
raw files from a ``root`` directory (IDX files for MNIST and Fashion-MNIST, the python
pickle batches for CIFAR-10). Without ``root`` they are searched in ``data_dir()/<name>``
(``$BYZBENCH_DATA`` or ``./data``), then in the directory of an OS package that ships them
(Debian/Ubuntu's ``dataset-fashion-mnist``: ``/usr/share/datasets/fashion-mnist``). When
the files are absent and torchvision is installed they are downloaded with it (into
``root``, or ``data_dir()/<name>``), otherwise :class:`DatasetNotFoundError` says where
byzbench looked and how to get them (:mod:`byzbench.data.provision`: ``byzbench data
fetch``).

Pixels are always scaled to ``[0, 1]``; with ``normalize: true`` (the default) every
channel (every feature, for ``synthetic``) is then standardised with the training split's
mean and standard deviation, and the test split with the same statistics.

Loaded datasets are cached per process, keyed by the dataset class and its parameters
(see :func:`clear_dataset_cache`): many cells of a grid share one dataset. The cached
:class:`~byzbench.data.base.Dataset` and its tensors are therefore shared by every caller
and must be treated as read-only — clone a tensor before modifying it (a data-poisoning
attack must work on copies).
"""

from __future__ import annotations

import codecs
import functools
import gzip
import importlib.util
import math
import os
import pickle
import shutil
import struct
import tarfile
import zlib
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field, model_validator

from byzbench.data.base import Dataset, DatasetParams, DatasetSource
from byzbench.registry import DATASETS

__all__ = [
    "CIFAR10",
    "MNIST",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "Digits",
    "FashionMNIST",
    "FileDatasetParams",
    "Synthetic",
    "apt_available",
    "clear_dataset_cache",
    "data_dir",
    "read_cifar_batch",
    "read_idx",
    "standardize_",
    "stratified_subset",
]

_CACHE_SIZE = 8
_STATS_CHUNK = 1 << 22  # elements per chunk when computing channel statistics


# --------------------------------------------------------------------------- errors


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are absent from its directory and could not be downloaded.

    A :class:`FileNotFoundError` (hence an :class:`OSError`); ``dataset``, ``directory`` and
    ``missing`` (file names) say what to place where. Picklable, so it crosses processes.
    """

    def __init__(self, message: str, dataset: str = "", directory: Path | None = None,
                 missing: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.dataset, self.directory, self.missing = dataset, directory, list(missing)

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.args[0], self.dataset, self.directory, self.missing)


class DatasetFormatError(ValueError):
    """A dataset file exists but is not in the expected format (bad magic, truncated…)."""


# --------------------------------------------------------------------------- helpers


def clear_dataset_cache() -> None:
    """Forget every dataset loaded in this process (frees their memory)."""
    _load_cached.cache_clear()


def standardize_(x_train: torch.Tensor, x_test: torch.Tensor, eps: float = 1e-8) -> None:
    """Standardise both CPU tensors in place, per channel (dim 1), with ``x_train``'s statistics.

    Statistics are accumulated in float64 over chunks of samples (two passes, population
    standard deviation) with numpy, single-threaded, so the result does not depend on the
    number of torch threads; a constant channel keeps its scale (std taken as 1).
    """
    train = x_train.numpy()
    channels = train.shape[1]
    flat = train.reshape(train.shape[0], channels, -1)
    rows = max(1, _STATS_CHUNK // max(1, flat.shape[1] * flat.shape[2]))
    count = flat.shape[0] * flat.shape[2]
    total = np.zeros(channels)
    for start in range(0, flat.shape[0], rows):
        total += flat[start:start + rows].sum(axis=(0, 2), dtype=np.float64)
    mean = total / count
    squares = np.zeros(channels)
    for start in range(0, flat.shape[0], rows):
        squares += np.square(flat[start:start + rows] - mean[:, None]).sum(axis=(0, 2))
    std = np.sqrt(squares / count)
    std[std <= eps] = 1.0
    shape = (1, channels) + (1,) * (train.ndim - 2)
    mean32, std32 = mean.astype(np.float32).reshape(shape), std.astype(np.float32).reshape(shape)
    for x in (train, x_test.numpy()):
        x -= mean32
        x /= std32


def stratified_subset(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of a random subset of ``size`` samples, stratified by label.

    Each class contributes in proportion to its frequency (within one sample); which
    samples of a class are taken is random.
    """
    labels = np.asarray(labels)
    n = labels.shape[0]
    if size >= n:
        return np.arange(n)
    perm = rng.permutation(n)
    _, inverse, counts = np.unique(labels[perm], return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - np.repeat(starts, counts)
    key = (rank + 0.5) / counts[inverse]  # the i-th sample of a class sits at (i+.5)/n_c
    return np.sort(perm[np.argsort(key, kind="stable")[:size]])


def _to_dataset(name: str, x_train: torch.Tensor, y_train: np.ndarray, x_test: torch.Tensor,
                y_test: np.ndarray, num_classes: int, normalize: bool) -> Dataset:
    if normalize:
        standardize_(x_train, x_test)
    return Dataset(name=name, x_train=x_train.contiguous(),
                   y_train=torch.from_numpy(np.asarray(y_train, dtype=np.int64)),
                   x_test=x_test.contiguous(),
                   y_test=torch.from_numpy(np.asarray(y_test, dtype=np.int64)),
                   num_classes=num_classes)


# --------------------------------------------------------------------------- caching


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _load_cached(cls: type[_CachedSource], params: DatasetParams, key: Hashable) -> Dataset:
    return cls(params)._build()


class _CachedSource(DatasetSource):
    """A dataset whose :meth:`load` is cached per process on (class, params, cache key)."""

    def load(self) -> Dataset:
        """The dataset, shared with every other caller: do not modify its tensors in place."""
        return _load_cached(type(self), self.params, self._cache_key())

    def _cache_key(self) -> Hashable:
        return ()

    def _build(self) -> Dataset:
        raise NotImplementedError


# --------------------------------------------------------------------------- digits

DIGITS_SAMPLES = 1797


class DigitsParams(DatasetParams):
    test_fraction: float = Field(0.25, ge=0.01, le=0.99,
                                 description="fraction f of the 1,797 images held out for "
                                             "testing: ⌈f·N⌉ images, each class within one "
                                             "image of f·n_c, drawn with numpy.random."
                                             "default_rng(split_seed); byzbench's own rule, so "
                                             "the split does not move with the scikit-learn "
                                             "version")
    split_seed: int = Field(0, ge=0, le=2**32 - 1,
                            description="seed of the train/test split; fixed, independent of "
                                        "the cell seed")


@DATASETS.register("digits")
class Digits(_CachedSource):
    """scikit-learn's bundled handwritten digits: 1,797 8×8 grey images of 10 classes, as
    ``[N, 1, 8, 8]`` in [0, 1], split train/test stratified by class (UCI optdigits test
    set; Alpaydin & Kaynak 1998). No download needed."""

    Params: ClassVar[type[DigitsParams]] = DigitsParams
    paper: ClassVar[str] = ("Alpaydin & Kaynak, Optical Recognition of Handwritten Digits, "
                            "UCI Machine Learning Repository, 1998")

    def train_size_bound(self) -> int:
        return DIGITS_SAMPLES - math.ceil(self.params.test_fraction * DIGITS_SAMPLES)

    def _build(self) -> Dataset:
        p = self.params
        x, y = _digits_arrays()
        train, test = stratified_split(y, p.test_fraction, p.split_seed)

        def images(a: np.ndarray) -> torch.Tensor:  # pixel values are 0..16
            return torch.from_numpy((a / 16.0).astype(np.float32).reshape(-1, 1, 8, 8))

        return _to_dataset(self.name, images(x[train]), y[train], images(x[test]), y[test],
                           10, p.normalize)


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digits as (pixels [N, 64] in 0..16, labels [N]).

    Read straight from the ``digits.csv.gz`` that scikit-learn ships (64 pixel columns, then
    the label; what ``load_digits`` itself parses), so a process need not import
    scikit-learn (~1 s) to get them; ``load_digits`` where that file has moved."""
    spec = importlib.util.find_spec("sklearn")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            table = np.loadtxt(path, delimiter=",")
            return table[:, :-1], table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return x, y.astype(np.int64)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) sample indices, each ascending: ⌈f·N⌉ test samples, stratified.

    Class c gets ⌊f·n_c⌋ test samples plus one more for the classes with the largest
    remainders f·n_c − ⌊f·n_c⌋ (ties to the lower class) until the total is ⌈f·N⌉, so
    |test_c − f·n_c| < 1; which samples of a class are held out is a seeded uniform draw
    (``numpy.random.default_rng(seed)``). Our own definition, so a dataset's split does not
    change with the scikit-learn version.
    """
    n = len(labels)
    counts = np.bincount(labels)
    quotas = test_fraction * counts
    per_class = np.floor(quotas).astype(np.int64)
    extra = math.ceil(test_fraction * n) - int(per_class.sum())
    per_class[np.argsort(-(quotas - per_class), kind="stable")[:extra]] += 1
    shuffled = np.random.default_rng(seed).permutation(n)
    grouped = shuffled[np.argsort(labels[shuffled], kind="stable")]  # by class, random within
    starts = np.cumsum(counts) - counts
    rank = np.arange(n) - np.repeat(starts, counts)                 # position within its class
    held_out = rank < np.repeat(per_class, counts)
    return np.sort(grouped[~held_out]), np.sort(grouped[held_out])


# --------------------------------------------------------------------------- synthetic


class SyntheticParams(DatasetParams):
    num_classes: int = Field(10, ge=2, le=10_000, description="number of classes")
    dim: int = Field(20, ge=1, le=100_000, description="feature dimension; input_shape is (dim,)")
    train_samples: int = Field(2000, ge=1, description="training samples (classes balanced)")
    test_samples: int = Field(500, ge=1, description="test samples (classes balanced)")
    separation: float = Field(3.0, ge=0.0,
                              description="class-mean scale: means ~ N(0, separation²/dim·I), so "
                                          "two means lie ≈ separation·√2 apart; noise N(0, I)")
    split_seed: int = Field(0, ge=0,
                            description="seed of the class means and samples; fixed, independent "
                                        "of the cell seed")

    @model_validator(mode="after")
    def _enough_samples(self) -> SyntheticParams:
        if self.train_samples < self.num_classes:
            raise ValueError(f"train_samples ({self.train_samples}) must be at least "
                             f"num_classes ({self.num_classes})")
        return self


@DATASETS.register("synthetic")
class Synthetic(_CachedSource):
    """Class-conditional Gaussians (the generative model of linear discriminant analysis;
    Hastie, Tibshirani & Friedman, ESL §4.3): x = μ_y + N(0, I), with random class means
    μ_c ~ N(0, separation²/dim · I) and balanced labels. Vectorised; 100k samples in well
    under a second."""

    Params: ClassVar[type[SyntheticParams]] = SyntheticParams
    paper: ClassVar[str] = ("Hastie, Tibshirani & Friedman, The Elements of Statistical "
                            "Learning, 2nd ed., §4.3 (class-conditional Gaussians), 2009")

    def train_size_bound(self) -> int:
        return self.params.train_samples

    def _build(self) -> Dataset:
        p = self.params
        # Independent streams: changing train_samples leaves the means and test set unchanged.
        means_rng = np.random.default_rng([p.split_seed, 0])
        means = (means_rng.standard_normal((p.num_classes, p.dim))
                 * (p.separation / math.sqrt(p.dim))).astype(np.float32)

        def sample(stream: int, n: int) -> tuple[torch.Tensor, np.ndarray]:
            rng = np.random.default_rng([p.split_seed, stream])
            y = rng.permutation(np.arange(n, dtype=np.int64) % p.num_classes)
            x = rng.standard_normal((n, p.dim), dtype=np.float32)
            x += means[y]
            return torch.from_numpy(x), y

        x_train, y_train = sample(1, p.train_samples)
        x_test, y_test = sample(2, p.test_samples)
        return _to_dataset(self.name, x_train, y_train, x_test, y_test, p.num_classes,
                           p.normalize)


# --------------------------------------------------------------------------- raw-file datasets


DATA_ENV = "BYZBENCH_DATA"


def data_dir() -> Path:
    """byzbench's own data directory: ``$BYZBENCH_DATA`` when set, else ``./data``.

    A file dataset whose ``root`` is not set is looked for in ``data_dir()/<name>`` first
    (where ``byzbench data fetch`` downloads it), then in its system package's directory.
    """
    return Path(os.environ.get(DATA_ENV) or "data").expanduser().absolute()


def apt_available() -> bool:
    """Whether this is a Debian-like system with apt-get on the PATH."""
    return shutil.which("apt-get") is not None


class FileDatasetParams(DatasetParams):
    """Parameters of the datasets read from raw files under ``root``."""

    root: str | None = Field(None, description="directory holding the raw files (relative to "
                                               "the working directory); none: searched for, "
                                               "see README § Data")
    download: bool = Field(True, description="if the files are absent and torchvision is "
                                             "installed, download them into root (unset: "
                                             "data/<name>)")
    max_train_samples: int | None = Field(None, ge=1,
                                          description="keep a stratified random subset of at "
                                                      "most this many training samples (quick runs)")
    max_test_samples: int | None = Field(None, ge=1,
                                         description="keep a stratified random subset of at most "
                                                     "this many test samples")
    subset_seed: int = Field(0, ge=0, description="seed of the max_*_samples subsets; fixed, "
                                                  "independent of the cell seed")


class _FileSource(_CachedSource):
    """Reads raw files from ``root``; falls back to a torchvision download.

    With ``root`` unset the files are searched, in order, in ``data_dir()/<name>`` and in
    :attr:`system_dirs` (where an OS package installs them); a download goes to the first.
    """

    Params: ClassVar[type[FileDatasetParams]] = FileDatasetParams
    num_classes: ClassVar[int] = 10
    files: ClassVar[tuple[str, ...]] = ()
    source_url: ClassVar[str] = ""
    torchvision_class: ClassVar[str] = ""
    files_note: ClassVar[str] = ""
    dir_name: ClassVar[str] = ""                 # its directory under data_dir()
    system_dirs: ClassVar[tuple[str, ...]] = ()  # where an OS package puts the files
    apt_package: ClassVar[str] = ""              # that Debian/Ubuntu package
    train_samples_full: ClassVar[int | None] = None  # the standard training split's size

    def train_size_bound(self) -> int | None:
        sizes = [v for v in (self.train_samples_full, self.params.max_train_samples)
                 if v is not None]
        return min(sizes) if sizes else None

    def search_roots(self) -> list[tuple[Path, str]]:
        """(directory, where it comes from) searched in order: ``root`` alone when set."""
        if self.params.root is not None:
            return [(Path(self.params.root).expanduser().absolute(), "root")]
        roots = [(data_dir() / self.dir_name, "byzbench data directory")]
        roots += [(Path(d), f"system package {self.apt_package}") for d in self.system_dirs]
        return roots

    @property
    def root(self) -> Path:
        """Where a download goes: ``root``, or ``data_dir()/<name>`` when unset."""
        return self.search_roots()[0][0]

    def _cache_key(self) -> Hashable:
        # the directory the files are read from (files placed later in an earlier directory
        # of the search are then read, not a stale copy); the search itself while absent
        found = self.find()
        dirs = [found[0]] if found is not None else self._candidate_dirs()
        return tuple(str(d.resolve()) for d in dirs)

    def _layout_dirs(self, root: Path) -> list[Path]:
        """Directories under one root that may hold the files, in order of preference."""
        raise NotImplementedError

    def _candidate_dirs(self) -> list[Path]:
        """Directories searched for the files, in order of preference."""
        return [d for root, _ in self.search_roots() for d in self._layout_dirs(root)]

    def _find(self, name: str, directory: Path) -> Path | None:
        path = directory / name
        return path if path.is_file() else None

    def check(self) -> None:
        self._locate()

    def find(self) -> tuple[Path, str] | None:
        """(directory holding every file, where it comes from), searching only: no download."""
        for root, origin in self.search_roots():
            for directory in self._layout_dirs(root):
                if all(self._find(f, directory) is not None for f in self.files):
                    return directory, origin
        return None

    def _locate(self) -> dict[str, Path]:
        """Paths of all :attr:`files`, from the first directory holding all of them."""
        best: tuple[Path, list[str]] | None = None
        for directory in self._candidate_dirs():
            found = {f: self._find(f, directory) for f in self.files}
            missing = [f for f, path in found.items() if path is None]
            if not missing:
                return {f: path for f, path in found.items() if path is not None}
            if best is None or len(missing) < len(best[1]):
                best = (directory, missing)
        assert best is not None
        reason = self._download()
        if reason is None:
            return self._locate_after_download(best)
        raise self._not_found(best[0], best[1], reason)

    def not_found(self, reason: str) -> DatasetNotFoundError:
        """The error for files absent (without trying a download), naming ``reason``."""
        best: tuple[Path, list[str]] | None = None
        for directory in self._candidate_dirs():
            missing = [f for f in self.files if self._find(f, directory) is None]
            if best is None or len(missing) < len(best[1]):
                best = (directory, missing)
        assert best is not None
        return self._not_found(best[0], best[1], reason)

    def _locate_after_download(self, best: tuple[Path, list[str]]) -> dict[str, Path]:
        for directory in self._candidate_dirs():
            found = {f: self._find(f, directory) for f in self.files}
            if all(path is not None for path in found.values()):
                return {f: path for f, path in found.items() if path is not None}
        raise self._not_found(best[0], best[1], "they were still missing after the download")

    def _download(self) -> str | None:
        """Download with torchvision into root; None on success, else why not."""
        if not self.params.download:
            return "download is off (download: false)"
        try:
            import torchvision.datasets as tv_datasets
        except ImportError:
            return "torchvision is not installed"
        except Exception as exc:  # a torchvision built for another torch fails oddly
            return f"torchvision failed to import ({type(exc).__name__}: {exc})"
        cls = getattr(tv_datasets, self.torchvision_class)
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            for train in (True, False):
                cls(str(self.root), train=train, download=True)
        except Exception as exc:
            return f"the torchvision download failed ({type(exc).__name__}: {exc})"
        return None

    def how_to_get(self) -> str:
        """The ways to get the files, as one sentence (no trailing period)."""
        ways = []
        fetch = f"byzbench data fetch {self.name}"
        if self.params.root is not None:
            fetch += f" --root {self.params.root}"
        if self.apt_package and self.params.root is None:
            install = f"apt-get install {self.apt_package}"
            ways.append(f"sudo {install} (or: {fetch} --apt), which "
                        f"puts them in {', '.join(self.system_dirs)}" if apt_available()
                        else f"on Debian/Ubuntu, sudo {install}")
        ways.append(f"pip install 'byzbench[vision]', then {fetch} (torchvision downloads "
                    f"them into {self.root})")
        ways.append(f"place the files there yourself (from {self.source_url}), or set the "
                    f"dataset's 'root' to where they are")
        return "To get them: " + "; or ".join(ways)

    def _not_found(self, directory: Path, missing: Sequence[str], reason: str
                   ) -> DatasetNotFoundError:
        others = [str(d) for d in self._candidate_dirs() if d != directory]
        also = f" (also looked in {', '.join(others)})" if others else ""
        message = (
            f"dataset '{self.name}': missing file(s) {', '.join(missing)}{self.files_note} in "
            f"directory {directory}{also}; {reason}. {self.how_to_get()}.")
        return DatasetNotFoundError(message, self.name, directory, missing)

    def _subset(self, labels: np.ndarray, limit: int | None, split: str) -> np.ndarray | None:
        if limit is None or limit >= labels.shape[0]:
            return None
        rng = np.random.default_rng([self.params.subset_seed, 0 if split == "train" else 1])
        return stratified_subset(labels, limit, rng)

    def _finish(self, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                y_test: np.ndarray) -> Dataset:
        """uint8 images ``[N, C, H, W]`` → subset → float32 in [0, 1] → standardise."""
        p = self.params
        for y, split in ((y_train, "train"), (y_test, "test")):
            if y.shape[0] == 0:
                raise DatasetFormatError(f"dataset '{self.name}': the {split} split is empty")
            if y.min(initial=0) < 0 or y.max(initial=0) >= self.num_classes:
                raise DatasetFormatError(
                    f"dataset '{self.name}': {split} labels outside 0..{self.num_classes - 1} "
                    f"(found {y.min()}..{y.max()})")
        keep = self._subset(y_train, p.max_train_samples, "train")
        if keep is not None:
            x_train, y_train = x_train[keep], y_train[keep]
        keep = self._subset(y_test, p.max_test_samples, "test")
        if keep is not None:
            x_test, y_test = x_test[keep], y_test[keep]

        def scaled(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(a.astype(np.float32)).div_(255.0)

        return _to_dataset(self.name, scaled(x_train), y_train, scaled(x_test), y_test,
                           self.num_classes, p.normalize)


# --------------------------------------------------------------------------- IDX (MNIST)

_IDX_TYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4",
                              0x0D: ">f4", 0x0E: ">f8"}


def _read_bytes(path: Path) -> bytes:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DatasetFormatError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from exc


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an IDX file (LeCun's MNIST format; ``.gz`` read transparently).

    Header: two zero bytes, a type code (0x08 ubyte, 0x09 byte, 0x0B short, 0x0C int,
    0x0D float, 0x0E double), the number of dimensions, then each dimension as a big-endian
    uint32; then the big-endian data. Raises :class:`DatasetFormatError` on a bad magic
    number or a data size that does not match the dimensions.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DatasetFormatError(f"{path}: {len(data)} bytes, too short for an IDX header")
    magic = struct.unpack(">I", data[:4])[0]
    zero0, zero1, code, ndim = data[:4]
    if zero0 or zero1 or code not in _IDX_TYPES:
        raise DatasetFormatError(
            f"{path}: bad IDX magic number 0x{magic:08X} (expected 0x0000TTNN: two zero bytes, "
            f"a type code in {{{', '.join(f'0x{c:02X}' for c in _IDX_TYPES)}}}, the number of "
            f"dimensions); not an IDX file, or corrupted")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetFormatError(f"{path}: truncated IDX header ({ndim} dimensions need "
                                 f"{header} bytes, file has {len(data)})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_TYPES[code])
    count = math.prod(dims)
    expected = count * dtype.itemsize
    if len(data) - header != expected:
        raise DatasetFormatError(
            f"{path}: IDX dimensions {list(dims)} need {expected} data bytes, file has "
            f"{len(data) - header}; truncated or corrupted")
    array = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=False)


def _read_idx_expecting(path: Path, ndim: int, what: str) -> np.ndarray:
    array = read_idx(path)
    if array.dtype != np.uint8 or array.ndim != ndim:
        magic = 0x0800 + ndim
        raise DatasetFormatError(
            f"{path}: expected {what} (IDX magic 0x{magic:08X}: unsigned bytes, {ndim} "
            f"dimension{'s' if ndim > 1 else ''}), found {array.dtype} with {array.ndim} "
            f"dimension(s)")
    return array


class MnistParams(FileDatasetParams):
    root: str | None = Field(None, description="directory with the IDX files (also searched: "
                                               "root/MNIST/raw, torchvision's layout); none: "
                                               "data/mnist ($BYZBENCH_DATA/mnist when set)")


class FashionMnistParams(FileDatasetParams):
    root: str | None = Field(None,
                             description="directory with the IDX files (also searched: "
                                         "root/FashionMNIST/raw, torchvision's layout); none: "
                                         "the first holding them of data/fashion_mnist "
                                         "($BYZBENCH_DATA/fashion_mnist when set) and "
                                         "/usr/share/datasets/fashion-mnist (Debian/Ubuntu "
                                         "package dataset-fashion-mnist)")


class _IdxSource(_FileSource):
    files: ClassVar[tuple[str, ...]] = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    files_note: ClassVar[str] = " (each may also be gzipped, name + '.gz')"

    def _layout_dirs(self, root: Path) -> list[Path]:
        return [root, root / self.torchvision_class / "raw"]

    def _find(self, name: str, directory: Path) -> Path | None:
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                return candidate
        return None

    def _build(self) -> Dataset:
        paths = self._locate()

        def split(images: str, labels: str) -> tuple[np.ndarray, np.ndarray]:
            x = _read_idx_expecting(paths[images], 3, "images")
            y = _read_idx_expecting(paths[labels], 1, "labels")
            if x.shape[0] != y.shape[0]:
                raise DatasetFormatError(f"{paths[images]} has {x.shape[0]} images but "
                                         f"{paths[labels]} has {y.shape[0]} labels")
            return x[:, None], y.astype(np.int64)

        x_train, y_train = split("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
        x_test, y_test = split("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
        return self._finish(x_train, y_train, x_test, y_test)


@DATASETS.register("mnist")
class MNIST(_IdxSource):
    """MNIST handwritten digits (LeCun et al. 1998): 60k/10k 28×28 grey images, 10 classes,
    as ``[N, 1, 28, 28]``, read from the four raw IDX files (optionally ``.gz``)."""

    Params: ClassVar[type[MnistParams]] = MnistParams
    paper: ClassVar[str] = ("LeCun, Bottou, Bengio & Haffner, Gradient-Based Learning Applied "
                            "to Document Recognition, Proc. IEEE 1998")
    source_url: ClassVar[str] = "https://yann.lecun.com/exdb/mnist/"
    torchvision_class: ClassVar[str] = "MNIST"
    dir_name: ClassVar[str] = "mnist"
    train_samples_full: ClassVar[int | None] = 60_000


@DATASETS.register("fashion_mnist")
class FashionMNIST(_IdxSource):
    """Fashion-MNIST (Xiao, Rasul & Vollgraf 2017): 60k/10k 28×28 grey images of clothing,
    10 classes, as ``[N, 1, 28, 28]``, read from the four raw IDX files (optionally ``.gz``)."""

    Params: ClassVar[type[FashionMnistParams]] = FashionMnistParams
    paper: ClassVar[str] = ("Xiao, Rasul & Vollgraf, Fashion-MNIST: a Novel Image Dataset for "
                            "Benchmarking Machine Learning Algorithms, arXiv:1708.07747, 2017")
    source_url: ClassVar[str] = "https://github.com/zalandoresearch/fashion-mnist"
    torchvision_class: ClassVar[str] = "FashionMNIST"
    dir_name: ClassVar[str] = "fashion_mnist"
    train_samples_full: ClassVar[int | None] = 60_000
    system_dirs: ClassVar[tuple[str, ...]] = ("/usr/share/datasets/fashion-mnist",)
    apt_package: ClassVar[str] = "dataset-fashion-mnist"


# --------------------------------------------------------------------------- CIFAR-10


def _numpy_reconstruct() -> Any:
    core = getattr(np, "_core", None) or np.core
    return core.multiarray._reconstruct


def _numpy_frombuffer() -> Any:
    core = getattr(np, "_core", None) or np.core
    return core.numeric._frombuffer


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR batch holds: builtins, numpy arrays and dtypes (and
    ``codecs.encode``, which protocol-2 pickles use for bytes), so a tampered file cannot
    run code."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = {
            ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
            ("numpy.core.numeric", "_frombuffer"): _numpy_frombuffer,
            ("numpy._core.numeric", "_frombuffer"): _numpy_frombuffer,
            ("numpy", "ndarray"): lambda: np.ndarray,
            ("numpy", "dtype"): lambda: np.dtype,
            ("_codecs", "encode"): lambda: codecs.encode,  # bytes under protocol 2 (py3)
        }
        if (module, name) in allowed:
            return allowed[(module, name)]()
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a "
                                     f"CIFAR-10 batch")


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 python batch: uint8 images ``[N, 3, 32, 32]`` and int64 labels.

    The file is a pickled dict with ``b'data'`` (``[N, 3072]`` uint8, the red, green then
    blue 32×32 planes of each image, row-major) and ``b'labels'`` (N ints). Only numpy
    arrays and builtins are unpickled.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            batch = _BatchUnpickler(fh, encoding="bytes").load()
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise DatasetFormatError(f"{path}: not a CIFAR-10 python batch "
                                 f"({type(exc).__name__}: {exc})") from exc
    if not isinstance(batch, dict):
        raise DatasetFormatError(f"{path}: expected a pickled dict, found "
                                 f"{type(batch).__name__}")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise DatasetFormatError(f"{path}: a CIFAR-10 batch needs the keys b'data' and "
                                 f"b'labels'; found {sorted(map(repr, batch))}")
    data = np.asarray(data)
    labels = np.asarray(labels)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetFormatError(f"{path}: b'data' must be uint8 [N, 3072], found "
                                 f"{data.dtype} {list(data.shape)}")
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or labels.dtype.kind not in "iu":
        raise DatasetFormatError(f"{path}: b'labels' must hold {data.shape[0]} integers, found "
                                 f"{labels.dtype} {list(labels.shape)}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


class Cifar10Params(FileDatasetParams):
    root: str | None = Field(None,
                             description="directory holding cifar-10-batches-py/ (or the batch "
                                         "files themselves, or cifar-10-python.tar.gz, extracted "
                                         "on first use); none: data/cifar10 "
                                         "($BYZBENCH_DATA/cifar10 when set)")


@DATASETS.register("cifar10")
class CIFAR10(_FileSource):
    """CIFAR-10 (Krizhevsky 2009): 50k/10k 32×32 colour images, 10 classes, as
    ``[N, 3, 32, 32]``, read from the python pickle batches (data_batch_1..5, test_batch)."""

    Params: ClassVar[type[Cifar10Params]] = Cifar10Params
    paper: ClassVar[str] = ("Krizhevsky, Learning Multiple Layers of Features from Tiny "
                            "Images, tech. report, University of Toronto, 2009")
    source_url: ClassVar[str] = "https://www.cs.toronto.edu/~kriz/cifar.html"
    torchvision_class: ClassVar[str] = "CIFAR10"
    dir_name: ClassVar[str] = "cifar10"
    train_samples_full: ClassVar[int | None] = 50_000
    files: ClassVar[tuple[str, ...]] = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
    batch_dir: ClassVar[str] = "cifar-10-batches-py"
    archive: ClassVar[str] = "cifar-10-python.tar.gz"

    def _layout_dirs(self, root: Path) -> list[Path]:
        return [root / self.batch_dir, root]

    def _download(self) -> str | None:
        archive = self.root / self.archive
        if archive.is_file():
            try:
                with tarfile.open(archive, "r:gz") as tar:
                    if hasattr(tarfile, "data_filter"):
                        tar.extractall(self.root, filter="data")
                    else:  # pragma: no cover - Python < 3.10.12 / 3.11.4
                        tar.extractall(self.root)  # noqa: S202
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise DatasetFormatError(f"{archive}: cannot extract "
                                         f"({type(exc).__name__}: {exc})") from exc
            return None
        return super()._download()

    def _build(self) -> Dataset:
        paths = self._locate()
        train = [read_cifar_batch(paths[f]) for f in self.files[:-1]]
        x_test, y_test = read_cifar_batch(paths["test_batch"])
        x_train = np.concatenate([x for x, _ in train])
        y_train = np.concatenate([y for _, y in train])
        return self._finish(x_train, y_train, x_test, y_test)
