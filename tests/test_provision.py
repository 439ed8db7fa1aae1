"""Provisioning of the file datasets (byzbench data fetch|where|list), the search order of an
unset ``root``, and — when the real files are on this machine — real Fashion-MNIST."""

from __future__ import annotations

import gzip
import struct
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from byzbench.cli import app
from byzbench.data import datasets as ds_module
from byzbench.data import provision
from byzbench.data.datasets import (
    DatasetNotFoundError,
    FashionMNIST,
    clear_dataset_cache,
    data_dir,
)

runner = CliRunner()
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def write_idx_gz(directory: Path, n_train: int = 20, n_test: int = 10, seed: int = 0) -> None:
    """The four files in the real format: big-endian IDX (magic 0x00000803 / 0x00000801),
    gzipped, as the dataset-fashion-mnist package and torchvision ship them."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, a in arrays.items():
        header = bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
        (directory / f"{name}.gz").write_bytes(gzip.compress(header + a.tobytes()))


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A private data directory and system directory; no torchvision; cache cleared."""
    monkeypatch.setenv("BYZBENCH_DATA", str(tmp_path / "data"))
    system = tmp_path / "usr-share-datasets" / "fashion-mnist"
    monkeypatch.setattr(FashionMNIST, "system_dirs", (str(system),))
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)
    monkeypatch.setattr(ds_module, "apt_available", lambda: True)
    clear_dataset_cache()
    yield types.SimpleNamespace(data=tmp_path / "data", system=system)
    clear_dataset_cache()


def fashion(**params) -> FashionMNIST:
    return FashionMNIST(FashionMNIST.Params(**params))


def test_root_defaults_to_search_order(sandbox):
    assert FashionMNIST.Params().root is None
    assert data_dir() == sandbox.data
    assert [str(d) for d, _ in fashion().search_roots()] == [
        str(sandbox.data / "fashion_mnist"), str(sandbox.system)]
    write_idx_gz(sandbox.system, seed=1)                      # the OS package's files
    assert fashion().find() == (sandbox.system, "system package dataset-fashion-mnist")
    system_copy = fashion(normalize=False).load()
    assert system_copy.x_train.shape == (20, 1, 28, 28)
    write_idx_gz(sandbox.data / "fashion_mnist" / "FashionMNIST" / "raw", seed=2)
    assert fashion().find() == (sandbox.data / "fashion_mnist" / "FashionMNIST" / "raw",
                                "byzbench data directory")  # data_dir() first
    local = fashion(normalize=False).load()
    assert not np.array_equal(local.x_train.numpy(), system_copy.x_train.numpy())
    explicit = fashion(root=str(sandbox.system))  # an explicit root is the only place looked
    assert explicit.find() == (sandbox.system, "root")


def test_data_dir_defaults_to_cwd_data(monkeypatch, tmp_path):
    monkeypatch.delenv("BYZBENCH_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    assert data_dir() == tmp_path / "data"


def test_missing_everywhere_names_all_places_and_the_ways(sandbox, monkeypatch):
    with pytest.raises(DatasetNotFoundError) as info:
        fashion().load()
    message = str(info.value)
    assert "\n" not in message and "dataset 'fashion_mnist'" in message
    for place in (sandbox.data / "fashion_mnist", sandbox.system):
        assert str(place) in message
    assert "torchvision is not installed" in message
    assert "sudo apt-get install dataset-fashion-mnist" in message
    assert "byzbench data fetch fashion_mnist --apt" in message
    assert "pip install 'byzbench[vision]'" in message
    monkeypatch.setattr(ds_module, "apt_available", lambda: False)
    message = str(pytest.raises(DatasetNotFoundError, fashion().load).value)
    assert "on Debian/Ubuntu, sudo apt-get install dataset-fashion-mnist" in message
    assert "--apt" not in message


def test_fetch_reports_files_already_present(sandbox):
    write_idx_gz(sandbox.system)
    done = provision.fetch("fashion_mnist")
    assert (done.directory, done.action) == (str(sandbox.system), "already present")
    assert done.line() == (f"fashion_mnist: {sandbox.system} (system package "
                           f"dataset-fashion-mnist; already present)")


def fake_torchvision(monkeypatch, class_name: str):
    calls = []

    class Fake:
        def __init__(self, root, train, download):
            calls.append(train)
            write_idx_gz(Path(root) / class_name / "raw")

    module = types.ModuleType("torchvision")
    module.datasets = types.ModuleType("torchvision.datasets")
    setattr(module.datasets, class_name, Fake)
    monkeypatch.setitem(sys.modules, "torchvision", module)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", module.datasets)
    return calls


def test_fetch_downloads_with_torchvision_into_the_data_dir(sandbox, monkeypatch):
    calls = fake_torchvision(monkeypatch, "FashionMNIST")
    done = provision.fetch("fashion_mnist")
    target = sandbox.data / "fashion_mnist" / "FashionMNIST" / "raw"
    assert (done.directory, done.source, done.action) == (str(target), "torchvision",
                                                          "downloaded")
    assert calls == [True, False]
    assert provision.fetch("fashion_mnist").action == "already present" and len(calls) == 2
    assert fashion().find() == (target, "byzbench data directory")  # the default root finds it


def test_fetch_apt_runs_apt_get_only_when_asked(sandbox, monkeypatch):
    commands = []

    def fake_run(command):
        commands.append(command)
        if command[-1] == "dataset-fashion-mnist":
            write_idx_gz(sandbox.system)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(provision, "_run", fake_run)
    monkeypatch.setattr(provision.os, "geteuid", lambda: 0, raising=False)
    with pytest.raises(DatasetNotFoundError):  # without --apt: never runs apt
        provision.fetch("fashion_mnist")
    assert commands == []
    done = provision.fetch("fashion_mnist", apt=True)
    assert commands == [["apt-get", "install", "-y", "-q", "dataset-fashion-mnist"]]
    assert (done.directory, done.action) == (str(sandbox.system), "installed with apt-get")


def test_fetch_apt_failure_retries_after_update_then_says_why(sandbox, monkeypatch):
    commands = []

    def failing(command):
        commands.append(command)
        return subprocess.CompletedProcess(command, 100, "",
                                           "E: Unable to locate package dataset-fashion-mnist\n")

    monkeypatch.setattr(provision, "_run", failing)
    monkeypatch.setattr(provision.os, "geteuid", lambda: 0, raising=False)
    with pytest.raises(DatasetNotFoundError, match="Unable to locate package"):
        provision.fetch("fashion_mnist", apt=True)
    assert [c[1] for c in commands] == ["install", "update", "install"]
    monkeypatch.setattr(ds_module, "apt_available", lambda: False)
    monkeypatch.setattr(provision, "apt_available", lambda: False)
    with pytest.raises(DatasetNotFoundError, match="needs apt-get"):
        provision.fetch("fashion_mnist", apt=True)
    with pytest.raises(DatasetNotFoundError, match="no OS package ships it"):
        provision.fetch("mnist", apt=True)


def test_cli_fetch_without_any_source_is_one_line(sandbox):
    result = runner.invoke(app, ["data", "fetch", "fashion_mnist"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: dataset 'fashion_mnist'")
    assert str(sandbox.system) in lines[0] and "apt-get install dataset-fashion-mnist" in lines[0]
    where = runner.invoke(app, ["data", "where", "fashion_mnist"])
    assert where.exit_code == 2 and len(where.output.strip().splitlines()) == 1


def test_cli_fetch_where_and_list(sandbox):
    write_idx_gz(sandbox.system)
    fetched = runner.invoke(app, ["data", "fetch", "fashion_mnist"])
    assert fetched.exit_code == 0
    assert fetched.output.strip() == (f"fashion_mnist: {sandbox.system} (system package "
                                      f"dataset-fashion-mnist; already present)")
    where = runner.invoke(app, ["data", "where", "fashion_mnist"])
    assert (where.exit_code, where.output.strip()) == (0, str(sandbox.system))
    listed = runner.invoke(app, ["data", "list"], terminal_width=200)
    assert listed.exit_code == 0
    row = next(line for line in listed.output.splitlines() if "fashion_mnist" in line)
    assert "present" in row
    assert "missing" in next(line for line in listed.output.splitlines() if " mnist " in line)
    bundled = runner.invoke(app, ["data", "fetch", "digits"])
    assert bundled.exit_code == 0 and "nothing to fetch" in bundled.output
    unknown = runner.invoke(app, ["data", "fetch", "fashon_mnist"])
    assert unknown.exit_code == 2 and "did you mean 'fashion_mnist'" in unknown.output


# --------------------------------------------------------------------------- real files

_REAL = FashionMNIST(FashionMNIST.Params(download=False)).find()


@pytest.mark.skipif(_REAL is None, reason="real Fashion-MNIST absent (apt-get install "
                                          "dataset-fashion-mnist, or byzbench data fetch "
                                          "fashion_mnist)")
def test_real_fashion_mnist():
    clear_dataset_cache()
    ds = FashionMNIST(FashionMNIST.Params(download=False, normalize=False)).load()
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.num_classes == 10
    for y, per_class in ((ds.y_train, 6000), (ds.y_test, 1000)):
        assert int(y.min()) == 0 and int(y.max()) == 9
        assert np.bincount(y.numpy()).tolist() == [per_class] * 10  # balanced, as published
    # the published statistics: training pixels' mean 0.2860 and std 0.3530 (in [0, 1])
    assert abs(ds.x_train.mean().item() - 0.2860) < 5e-4
    assert abs(ds.x_train.std().item() - 0.3530) < 5e-4
    assert ds.y_train[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]  # the files' first labels
    assert ds.y_test[:5].tolist() == [9, 2, 1, 1, 6]
    clear_dataset_cache()


def test_a_grid_runs_on_the_system_files_and_fails_in_one_line_without(sandbox, tmp_path):
    from helpers import TINY_BASE, write_grid

    grid = write_grid(tmp_path / "fm.yaml", {
        "name": "fm", "base": {**TINY_BASE, "dataset": "fashion_mnist",
                               "partition": {"name": "bias", "bias": 0.5}, "clients": 4}})
    missing = runner.invoke(app, ["run", str(grid), "-o", str(tmp_path / "r0"), "-q", "-w", "1"])
    assert missing.exit_code == 2 and "Traceback" not in missing.output
    assert len(missing.output.strip().splitlines()) == 1
    assert "fm.yaml" in missing.output and str(sandbox.system) in missing.output
    write_idx_gz(sandbox.system, n_train=40)
    ok = runner.invoke(app, ["run", str(grid), "-o", str(tmp_path / "r1"), "-q", "-w", "1"])
    assert ok.exit_code == 0, ok.output
