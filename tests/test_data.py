"""Datasets (bundled, synthetic, raw-file loaders on tiny files) and partitions."""

from __future__ import annotations

import gzip
import io
import math
import pickle
import struct
import subprocess
import sys
import tarfile
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from byzbench.data.base import Dataset
from byzbench.data.datasets import (
    CIFAR10,
    MNIST,
    DatasetFormatError,
    DatasetNotFoundError,
    Digits,
    FashionMNIST,
    Synthetic,
    clear_dataset_cache,
    read_idx,
    stratified_split,
    stratified_subset,
)
from byzbench.data.partition import Bias, Dirichlet, Shards
from byzbench.registry import DATASETS, PARTITIONS

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_dataset_cache()
    yield
    clear_dataset_cache()


@pytest.fixture
def no_torchvision(monkeypatch):
    """Make ``import torchvision`` fail, whatever is installed."""
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)


def make(registry_cls, **params):
    return registry_cls(registry_cls.Params(**params))


# --------------------------------------------------------------------------- digits


@pytest.mark.parametrize("registry", [DATASETS, PARTITIONS])
def test_every_parameter_is_documented(registry):
    for name, cls in registry.items():
        assert cls.__doc__ and cls.paper, name
        for field, info in cls.Params.model_fields.items():
            assert info.description, f"{name}.{field}"


def test_registry_names():
    assert {"digits", "synthetic", "mnist", "fashion_mnist", "cifar10"} <= set(DATASETS.names())
    assert {"iid", "dirichlet", "shards", "bias"} <= set(PARTITIONS.names())
    assert DATASETS.get("digits") is Digits


def test_digits_shapes_split_and_stratification():
    ds = make(Digits).load()
    assert isinstance(ds, Dataset) and ds.name == "digits" and ds.num_classes == 10
    assert ds.input_shape == (1, 8, 8)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert len(ds.x_test) == math.ceil(0.25 * 1797) and len(ds.x_train) + len(ds.x_test) == 1797
    assert set(ds.y_train.tolist()) == set(range(10)) == set(ds.y_test.tolist())
    all_counts = np.bincount(np.concatenate([ds.y_train, ds.y_test]), minlength=10)
    test_counts = np.bincount(ds.y_test.numpy(), minlength=10)
    assert np.all(np.abs(test_counts - all_counts * 0.25) <= 1.0)


def test_stratified_split_hand_computed():
    labels = np.array([0, 0, 0, 1, 1, 2])
    # f·n_c = 1.5, 1, 0.5 → floors 1, 1, 0; ⌈0.5·6⌉ = 3 needs one more: remainders .5, 0, .5,
    # the tie goes to class 0 → 2, 1, 0 held out
    train, test = stratified_split(labels, 0.5, seed=3)
    assert np.bincount(labels[test], minlength=3).tolist() == [2, 1, 0]
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(6))
    assert list(train) == sorted(train) and list(test) == sorted(test)
    draws = {tuple(stratified_split(labels, 0.5, seed=s)[1]) for s in range(20)}
    assert len(draws) > 1  # the seed picks which samples of a class are held out
    assert all(np.array_equal(stratified_split(labels, 0.5, seed=7)[1],
                              stratified_split(labels, 0.5, seed=7)[1]) for _ in range(3))


def test_digits_load_without_importing_scikit_learn():
    code = ("import sys; from byzbench.data.datasets import Digits; "
            "ds = Digits(Digits.Params()).load(); "
            "print(len(ds.x_train), 'sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["1347", "False"]


def test_digits_normalisation_and_raw_scale():
    ds = make(Digits).load()
    assert abs(ds.x_train.mean().item()) < 1e-5 and abs(ds.x_train.std().item() - 1) < 1e-3
    raw = make(Digits, normalize=False).load()
    assert raw.x_train.min() == 0 and raw.x_train.max() == 1
    # the same split either way; only the scale differs
    assert torch.equal(raw.y_train, ds.y_train)
    assert torch.all(torch.round(raw.x_train * 16) == raw.x_train * 16)


def test_digits_split_seed_and_cache():
    a, b = make(Digits).load(), make(Digits, split_seed=1).load()
    assert not torch.equal(a.y_train, b.y_train)
    assert make(Digits).load() is a  # cached per (class, params)
    small = make(Digits, test_fraction=0.5).load()
    assert len(small.x_test) == math.ceil(0.5 * 1797)
    with pytest.raises(ValidationError):
        Digits.Params(test_fraction=1.0)
    with pytest.raises(ValidationError):
        Digits.Params(bogus=1)


# --------------------------------------------------------------------------- synthetic


def test_synthetic_shapes_balance_and_normalisation():
    ds = make(Synthetic, num_classes=4, dim=7, train_samples=402, test_samples=50).load()
    assert ds.input_shape == (7,) and ds.num_classes == 4
    assert ds.x_train.shape == (402, 7) and ds.x_test.shape == (50, 7)
    assert np.bincount(ds.y_train.numpy()).tolist() == [101, 101, 100, 100]
    assert torch.allclose(ds.x_train.mean(0), torch.zeros(7), atol=1e-5)
    assert torch.allclose(ds.x_train.std(0, unbiased=False), torch.ones(7), atol=1e-4)


def test_synthetic_deterministic_and_seeded():
    a = make(Synthetic).load()
    clear_dataset_cache()
    b = make(Synthetic).load()
    assert a is not b
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    c = make(Synthetic, split_seed=1).load()
    assert not torch.equal(a.x_train, c.x_train)
    # the test set does not depend on how many training samples are drawn
    d = make(Synthetic, train_samples=3000, normalize=False).load()
    e = make(Synthetic, normalize=False).load()
    assert torch.equal(d.x_test, e.x_test)


def test_synthetic_scales_and_is_learnable():
    big = make(Synthetic, train_samples=100_000, test_samples=10).load()
    assert big.x_train.shape == (100_000, 20)
    ds = make(Synthetic).load()
    # nearest class mean (estimated on train) is far above chance
    means = torch.stack([ds.x_train[ds.y_train == c].mean(0) for c in range(10)])
    pred = torch.cdist(ds.x_test, means).argmin(1)
    assert (pred == ds.y_test).float().mean() > 0.6
    with pytest.raises(ValidationError):
        Synthetic.Params(num_classes=10, train_samples=5)


# --------------------------------------------------------------------------- IDX files


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def tiny_idx(rng, n_train=12, n_test=6, h=5, w=4):
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, h, w), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, h, w), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test).astype(np.uint8),
    }


def write_idx(directory: Path, arrays: dict[str, np.ndarray], gz: bool = False) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        data = idx_bytes(array)
        if gz:
            (directory / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / name).write_bytes(data)


def test_read_idx_other_types(tmp_path):
    path = tmp_path / "ints"
    values = np.arange(-6, 6, dtype=np.int32).reshape(3, 4) * 1000
    path.write_bytes(idx_bytes(values, 0x0C))
    out = read_idx(path)
    assert out.dtype == np.int32 and np.array_equal(out, values)
    # big-endian on disk: the first element's bytes
    assert path.read_bytes()[12:16] == struct.pack(">i", -6000)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("cls,layout", [(MNIST, "MNIST/raw"), (FashionMNIST, "FashionMNIST/raw"),
                                        (MNIST, ".")])
def test_idx_loader_round_trip(tmp_path, gz, cls, layout):
    arrays = tiny_idx(np.random.default_rng(0))
    write_idx(tmp_path / layout, arrays, gz=gz)
    ds = make(cls, root=str(tmp_path), normalize=False, download=False).load()
    assert ds.input_shape == (1, 5, 4) and ds.num_classes == 10
    x_uint8 = torch.round(ds.x_train * 255).to(torch.uint8)
    assert torch.equal(x_uint8[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]))
    assert torch.equal(ds.x_test, torch.from_numpy(arrays["t10k-images-idx3-ubyte"])
                       .float().div(255).unsqueeze(1))
    assert ds.y_train.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert ds.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


def test_idx_loader_normalises_and_subsets(tmp_path):
    write_idx(tmp_path, tiny_idx(np.random.default_rng(1), n_train=40))
    ds = make(MNIST, root=str(tmp_path), download=False).load()
    assert abs(ds.x_train.mean().item()) < 1e-5
    assert abs(ds.x_train.std(unbiased=False).item() - 1) < 1e-4
    sub = make(MNIST, root=str(tmp_path), download=False, max_train_samples=20,
               max_test_samples=3).load()
    assert len(sub.x_train) == 20 and len(sub.x_test) == 3
    assert np.bincount(sub.y_train.numpy(), minlength=10).tolist() == [2] * 10  # stratified


def test_missing_files_error_names_files_and_directory(tmp_path, no_torchvision):
    root = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as info:
        make(MNIST, root=str(root)).load()
    message = str(info.value)
    for name in IDX_FILES:
        assert name in message
    assert str(root) in message and "byzbench[vision]" in message and "mnist" in message
    assert "torchvision is not installed" in message
    assert isinstance(info.value, FileNotFoundError)
    assert info.value.missing == list(IDX_FILES) and info.value.directory == root
    copy = pickle.loads(pickle.dumps(info.value))  # crosses worker processes intact
    assert str(copy) == message and copy.missing == list(IDX_FILES)


def fake_torchvision(monkeypatch, arrays=None):
    """Install a stand-in torchvision whose MNIST 'download' writes tiny IDX files."""
    calls = []

    class FakeMNIST:
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            if arrays is None:
                raise RuntimeError("network unreachable")
            write_idx(Path(root) / "MNIST" / "raw", arrays, gz=True)

    datasets = types.ModuleType("torchvision.datasets")
    datasets.MNIST = FakeMNIST
    module = types.ModuleType("torchvision")
    module.datasets = datasets
    monkeypatch.setitem(sys.modules, "torchvision", module)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", datasets)
    return calls


def test_download_fallback_with_torchvision(tmp_path, monkeypatch):
    arrays = tiny_idx(np.random.default_rng(0))
    calls = fake_torchvision(monkeypatch, arrays)
    ds = make(MNIST, root=str(tmp_path / "m"), normalize=False).load()
    assert [c[1:] for c in calls] == [(True, True), (False, True)]
    assert ds.y_train.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    clear_dataset_cache()
    make(MNIST, root=str(tmp_path / "m")).load()  # now found on disk: no second download
    assert len(calls) == 2


def test_download_failure_is_reported(tmp_path, monkeypatch):
    fake_torchvision(monkeypatch, None)
    with pytest.raises(DatasetNotFoundError, match="download failed.*network unreachable"):
        make(MNIST, root=str(tmp_path)).load()


def test_partially_missing_files_named(tmp_path):
    arrays = tiny_idx(np.random.default_rng(0))
    del arrays["t10k-labels-idx1-ubyte"]
    write_idx(tmp_path / "FashionMNIST" / "raw", arrays)
    with pytest.raises(DatasetNotFoundError) as info:
        make(FashionMNIST, root=str(tmp_path), download=False).load()
    assert info.value.missing == ["t10k-labels-idx1-ubyte"]
    assert info.value.directory == tmp_path / "FashionMNIST" / "raw"
    assert "download is off" in str(info.value)


def test_corrupted_idx_files(tmp_path):
    arrays = tiny_idx(np.random.default_rng(0))
    write_idx(tmp_path, arrays)
    bad = tmp_path / "train-images-idx3-ubyte"
    data = bytearray(bad.read_bytes())
    data[0:4] = b"\x12\x34\x08\x03"
    bad.write_bytes(bytes(data))
    with pytest.raises(DatasetFormatError, match=r"magic number 0x12340803.*") as info:
        make(MNIST, root=str(tmp_path), download=False).load()
    assert str(bad) in str(info.value)
    # truncated data
    bad.write_bytes(idx_bytes(arrays["train-images-idx3-ubyte"])[:-3])
    with pytest.raises(DatasetFormatError, match="truncated"):
        make(MNIST, root=str(tmp_path), download=False).load()
    # labels file where images belong
    bad.write_bytes(idx_bytes(arrays["train-labels-idx1-ubyte"]))
    with pytest.raises(DatasetFormatError, match="expected images"):
        make(MNIST, root=str(tmp_path), download=False).load()
    # not gzip at all
    bad.unlink()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip data")
    with pytest.raises(DatasetFormatError, match="cannot read"):
        make(MNIST, root=str(tmp_path), download=False).load()


def test_mismatched_counts(tmp_path):
    arrays = tiny_idx(np.random.default_rng(0))
    arrays["train-labels-idx1-ubyte"] = arrays["train-labels-idx1-ubyte"][:-1]
    write_idx(tmp_path, arrays)
    with pytest.raises(DatasetFormatError, match="12 images but"):
        make(MNIST, root=str(tmp_path), download=False).load()


# --------------------------------------------------------------------------- CIFAR-10


def tiny_cifar(rng, per_batch=3, n_test=4):
    batches = {}
    for i in range(1, 6):
        batches[f"data_batch_{i}"] = {
            b"batch_label": f"training batch {i} of 5".encode(),
            b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in rng.integers(0, 10, per_batch)],
            b"filenames": [b"x.png"] * per_batch,
        }
    batches["test_batch"] = {
        b"batch_label": b"testing batch 1 of 1",
        b"data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8),
        b"labels": [int(v) for v in rng.integers(0, 10, n_test)],
        b"filenames": [b"y.png"] * n_test,
    }
    return batches


def write_cifar(directory: Path, batches) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, batch in batches.items():
        (directory / name).write_bytes(pickle.dumps(batch, protocol=2))


def test_cifar_round_trip(tmp_path):
    batches = tiny_cifar(np.random.default_rng(0))
    write_cifar(tmp_path / "cifar-10-batches-py", batches)
    ds = make(CIFAR10, root=str(tmp_path), normalize=False, download=False).load()
    assert ds.input_shape == (3, 32, 32) and len(ds.x_train) == 15 and len(ds.x_test) == 4
    data = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    expected = torch.from_numpy(data.reshape(-1, 3, 32, 32))
    assert torch.equal(torch.round(ds.x_train * 255).to(torch.uint8), expected)
    # the red plane of the first image is its first 1024 bytes, row-major
    assert torch.equal(ds.x_train[0, 0, 0], torch.from_numpy(data[0, :32]).float() / 255)
    labels = sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    assert ds.y_train.tolist() == labels
    assert ds.y_test.tolist() == batches["test_batch"][b"labels"]
    normed = make(CIFAR10, root=str(tmp_path), download=False).load()
    assert torch.allclose(normed.x_train.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)


class Py2Pickler(pickle._Pickler):
    """Writes a pickle as Python 2 did (the real CIFAR-10 files): str and bytes as py2
    ``str`` opcodes, numpy globals under ``numpy.core``."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    def save_global(self, obj, name=None):
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)

    dispatch[str] = dispatch[bytes] = save_py2_str
    dispatch[type] = save_global


def test_cifar_python2_pickles(tmp_path):
    batches = tiny_cifar(np.random.default_rng(2))
    directory = tmp_path / "cifar-10-batches-py"
    directory.mkdir()
    for name, batch in batches.items():
        py2 = {k.decode(): v for k, v in batch.items()}  # py2 str keys: b'data' on load
        with (directory / name).open("wb") as fh:
            Py2Pickler(fh, protocol=2).dump(py2)
    assert b"numpy.core.multiarray\n_reconstruct" in (directory / "test_batch").read_bytes()
    ds = make(CIFAR10, root=str(tmp_path), normalize=False, download=False).load()
    expected = batches["test_batch"][b"data"].reshape(-1, 3, 32, 32)
    assert torch.equal(torch.round(ds.x_test * 255).to(torch.uint8), torch.from_numpy(expected))
    assert ds.y_test.tolist() == batches["test_batch"][b"labels"]


def test_cifar_from_archive(tmp_path):
    batches = tiny_cifar(np.random.default_rng(1))
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        for name, batch in batches.items():
            payload = pickle.dumps(batch)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    ds = make(CIFAR10, root=str(tmp_path), download=False).load()
    assert len(ds.x_train) == 15 and (tmp_path / "cifar-10-batches-py" / "test_batch").is_file()


def test_cifar_missing_and_corrupted(tmp_path, no_torchvision):
    with pytest.raises(DatasetNotFoundError) as info:
        make(CIFAR10, root=str(tmp_path)).load()
    message = str(info.value)
    assert "data_batch_1" in message and "test_batch" in message
    assert str(tmp_path / "cifar-10-batches-py") in message

    batches = tiny_cifar(np.random.default_rng(0))
    write_cifar(tmp_path, batches)  # batch files directly in root are accepted too
    (tmp_path / "data_batch_2").write_bytes(b"garbage")
    with pytest.raises(DatasetFormatError, match="data_batch_2"):
        make(CIFAR10, root=str(tmp_path)).load()
    batches["data_batch_2"] = {b"data": batches["data_batch_2"][b"data"]}
    write_cifar(tmp_path, batches)
    with pytest.raises(DatasetFormatError, match="b'labels'"):
        make(CIFAR10, root=str(tmp_path)).load()


def test_cifar_refuses_arbitrary_pickles(tmp_path):
    batches = tiny_cifar(np.random.default_rng(0))
    write_cifar(tmp_path, batches)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": Path("x"), b"labels": []}))
    with pytest.raises(DatasetFormatError, match="refusing"):
        make(CIFAR10, root=str(tmp_path), download=False).load()


# --------------------------------------------------------------------------- partitions

PARTITION_CASES = [("iid", {}), ("dirichlet", {"alpha": 0.5}), ("dirichlet", {"alpha": 0.01}),
                   ("dirichlet", {"alpha": 100.0}), ("shards", {}),
                   ("shards", {"shards_per_client": 5}), ("bias", {}), ("bias", {"bias": 1.0}),
                   ("bias", {"bias": 0.0})]


def partition(name: str, **params):
    cls = PARTITIONS.get(name)
    return cls(cls.Params(**params))


@st.composite
def labels_and_clients(draw):
    n = draw(st.integers(1, 300))
    num_classes = draw(st.integers(1, 12))
    labels = np.array(draw(st.lists(st.integers(0, num_classes - 1), min_size=n, max_size=n)))
    clients = draw(st.integers(1, n))
    return labels, clients


@pytest.mark.parametrize("name,params", PARTITION_CASES)
@settings(max_examples=40, deadline=None)
@given(case=labels_and_clients(), seed=st.integers(0, 2**32 - 1))
def test_partition_properties(name, params, case, seed):
    labels, k = case
    parts = partition(name, **params).split(labels, k, np.random.default_rng(seed))
    assert len(parts) == k
    assert all(p.dtype == np.int64 and p.size >= 1 for p in parts)
    flat = np.concatenate(parts)
    assert flat.size == labels.size and np.array_equal(np.sort(flat), np.arange(labels.size))
    again = partition(name, **params).split(labels, k, np.random.default_rng(seed))
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


@pytest.mark.parametrize("name,params", PARTITION_CASES)
def test_partition_rejects_too_many_clients(name, params):
    with pytest.raises(ValueError, match="cannot split 5 training samples among 6 clients"):
        partition(name, **params).split(np.zeros(5, dtype=int), 6, np.random.default_rng(0))
    with pytest.raises(ValueError, match="positive integer"):
        partition(name, **params).split(np.zeros(5, dtype=int), 0, np.random.default_rng(0))


def test_iid_sizes_near_equal():
    parts = partition("iid").split(np.zeros(103, dtype=int), 10, np.random.default_rng(0))
    assert sorted(len(p) for p in parts) == [10] * 7 + [11] * 3


def mean_entropy(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> float:
    out = []
    for p in parts:
        q = np.bincount(labels[p], minlength=num_classes) / len(p)
        q = q[q > 0]
        out.append(float(-(q * np.log(q)).sum()))
    return float(np.mean(out))


def test_dirichlet_small_alpha_is_skewed():
    labels = np.repeat(np.arange(10), 200)
    rng = np.random.default_rng
    iid = mean_entropy(labels, partition("iid").split(labels, 20, rng(0)), 10)
    skewed = mean_entropy(labels, partition("dirichlet", alpha=0.1).split(labels, 20, rng(0)), 10)
    flat = mean_entropy(labels, partition("dirichlet", alpha=100).split(labels, 20, rng(0)), 10)
    assert skewed < 0.6 * iid and flat > 0.9 * iid
    with pytest.raises(ValidationError):
        Dirichlet.Params(alpha=0)


def test_dirichlet_repair_fills_every_client():
    # alpha → 0 puts each class on one client: most clients start empty
    labels = np.repeat(np.arange(3), 50)
    parts = partition("dirichlet", alpha=1e-4).split(labels, 100, np.random.default_rng(3))
    assert min(len(p) for p in parts) == 1 and sum(len(p) for p in parts) == 150


@settings(max_examples=40, deadline=None)
@given(k=st.integers(1, 20), per_client=st.integers(1, 4), shard_size=st.integers(1, 6),
       num_classes=st.integers(1, 10), seed=st.integers(0, 2**32 - 1))
def test_shards_label_count(k, per_client, shard_size, num_classes, seed):
    # class sizes are multiples of the shard size, so shards are label-pure
    num_shards = k * per_client
    sizes = np.random.default_rng(seed).multinomial(num_shards, np.ones(num_classes) / num_classes)
    labels = np.repeat(np.arange(num_classes), sizes * shard_size)
    labels = np.random.default_rng(seed).permutation(labels)
    parts = partition("shards", shards_per_client=per_client).split(
        labels, k, np.random.default_rng(seed))
    for p in parts:
        assert len(p) == per_client * shard_size
        assert len(np.unique(labels[p])) <= per_client


def test_shards_with_few_samples():
    labels = np.arange(7) % 3
    parts = Shards(Shards.Params(shards_per_client=3)).split(labels, 3, np.random.default_rng(0))
    assert sorted(len(p) for p in parts) == [2, 2, 3]


def bias_split(h: float, labels: np.ndarray, k: int, seed: int = 0) -> list[np.ndarray]:
    return Bias(Bias.Params(bias=h)).split(labels, k, np.random.default_rng(seed))


def test_bias_one_gives_each_client_a_single_label():
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(10), 300))
    parts = bias_split(1.0, labels, 20)
    # client j is in group floor(j·C/k) = j // 2 and holds only that label
    assert [np.unique(labels[p]).tolist() for p in parts] == [[j // 2] for j in range(20)]


def test_bias_groups_when_clients_not_divisible_by_classes():
    labels = np.random.default_rng(1).permutation(np.repeat(np.arange(10), 200))
    parts = bias_split(1.0, labels, 25)
    held = [np.unique(labels[p]).tolist() for p in parts]
    assert all(len(h) == 1 for h in held)
    clients_per_label = np.bincount([h[0] for h in held], minlength=10)
    assert sorted(clients_per_label.tolist()) == [2] * 5 + [3] * 5  # near-equal groups
    # fewer clients than labels: group g is client floor(g·k/C), serving several groups
    parts = bias_split(1.0, labels, 3)
    assert [np.unique(labels[p]).tolist() for p in parts] == [[0, 1, 2, 3], [4, 5, 6],
                                                               [7, 8, 9]]


def test_bias_1_over_c_is_iid():
    labels = np.random.default_rng(2).integers(0, 10, 100_000)
    parts = bias_split(0.1, labels, 10, seed=3)
    overall = np.bincount(labels, minlength=10) / labels.size
    for p in parts:  # ~10k samples each: binomial sd of a share ≈ 0.003
        share = np.bincount(labels[p], minlength=10) / p.size
        assert np.abs(share - overall).max() < 0.015
    iid = mean_entropy(labels, partition("iid").split(labels, 10, np.random.default_rng(0)), 10)
    assert mean_entropy(labels, parts, 10) > 0.999 * iid


@pytest.mark.parametrize("h", [0.0, 0.3, 0.5, 0.8])
def test_bias_group_label_share_is_h(h):
    c, k = 10, 20
    labels = np.random.default_rng(4).permutation(np.repeat(np.arange(c), 5000))
    parts = bias_split(h, labels, k, seed=5)
    group_of = np.empty(labels.size, dtype=np.int64)
    for j, p in enumerate(parts):
        group_of[p] = j * c // k
    for label in range(c):  # P(group l | label l) = h, each other group (1-h)/(C-1)
        to = np.bincount(group_of[labels == label], minlength=c) / 5000
        assert abs(to[label] - h) < 0.025
        assert np.abs(np.delete(to, label) - (1 - h) / (c - 1)).max() < 0.02
    for g in range(c):  # balanced classes: a group's own label is a share h of its data
        held = labels[group_of == g]
        assert abs(np.mean(held == g) - h) < 0.025
    assert sum(p.size for p in parts) == labels.size


def test_bias_deterministic_and_exhaustive():
    labels = np.random.default_rng(6).integers(0, 10, 5000)
    a, b, other = bias_split(0.5, labels, 30, 7), bias_split(0.5, labels, 30, 7), \
        bias_split(0.5, labels, 30, 8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, other, strict=True))
    flat = np.concatenate(a)
    assert np.array_equal(np.sort(flat), np.arange(labels.size))
    assert all(x.dtype == np.int64 and np.all(np.diff(x) > 0) for x in a)


def test_bias_fills_empty_clients_and_validates():
    labels = np.repeat(np.arange(5), 4)  # 20 samples, 18 clients: the draw leaves some empty
    parts = bias_split(0.9, labels, 18, seed=0)
    assert min(p.size for p in parts) == 1 and sum(p.size for p in parts) == 20
    parts = bias_split(0.5, np.full(30, 7), 4)  # one label: one group, uniform split
    assert sum(p.size for p in parts) == 30
    with pytest.raises(ValidationError):
        Bias.Params(bias=1.5)
    assert Bias.Params().bias == 0.5


def test_stratified_subset():
    labels = np.repeat(np.arange(4), [40, 30, 20, 10])
    keep = stratified_subset(labels, 50, np.random.default_rng(0))
    assert len(keep) == 50 and np.all(np.diff(keep) > 0)
    assert np.bincount(labels[keep]).tolist() == [20, 15, 10, 5]
