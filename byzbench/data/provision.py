"""Provisioning of the file datasets: ``byzbench data fetch|where|list`` and ``make data``.

:func:`fetch` makes a dataset's files available from the first source that has them:

1. files already present where the dataset looks for them (``root`` when given; else
   ``data_dir()/<name>``, then the OS package's directory, e.g.
   ``/usr/share/datasets/fashion-mnist`` from Debian/Ubuntu's ``dataset-fashion-mnist``);
2. with ``apt=True`` only (the ``--apt`` flag), the OS package, installed with
   ``apt-get install -y`` (through ``sudo`` when not root; ``apt-get update`` and a retry
   if the first install fails) — byzbench never runs apt on its own;
3. a torchvision download into ``root`` (default ``data_dir()/<name>``), when torchvision
   imports.

Otherwise it raises :class:`~byzbench.data.datasets.DatasetNotFoundError`, whose one-line
message names the dataset, every directory searched and the ways to get the files (the
apt command on a Debian-like system).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from byzbench.data.datasets import (
    DatasetNotFoundError,
    _FileSource,
    apt_available,
    clear_dataset_cache,
)
from byzbench.registry import DATASETS

__all__ = ["Fetched", "fetch", "file_dataset", "is_file_dataset", "where"]


@dataclass(frozen=True)
class Fetched:
    """What :func:`fetch` did: the directory holding the files, its origin, the action."""

    name: str
    directory: str
    source: str   # "byzbench data directory", "root", "system package …", "torchvision"
    action: str   # "already present", "installed with apt-get", "downloaded"

    def line(self) -> str:
        return f"{self.name}: {self.directory} ({self.source}; {self.action})"


def is_file_dataset(name: str) -> bool:
    return issubclass(DATASETS.get(name), _FileSource)


def file_dataset(name: str, root: str | None = None, download: bool = True) -> _FileSource:
    """The registered file dataset ``name`` (its parameters' defaults, ``root`` if given)."""
    cls = DATASETS.get(name)
    if not issubclass(cls, _FileSource):
        raise ValueError(f"dataset '{name}' needs no files")
    return cls(cls.Params(root=root, download=download))


def where(name: str, root: str | None = None) -> tuple[str, str]:
    """(directory holding the files, origin), searching only; raises if absent."""
    source = file_dataset(name, root, download=False)
    found = source.find()
    if found is None:
        raise source.not_found("no directory searched holds them all")
    return str(found[0]), found[1]


def fetch(name: str, root: str | None = None, apt: bool = False) -> Fetched:
    """Make the files of dataset ``name`` available (see the module doc for the order)."""
    source = file_dataset(name, root)
    found = source.find()
    if found is not None:
        return Fetched(name, str(found[0]), found[1], "already present")
    if apt and source.apt_package and root is None:
        _apt_install(source)
        found = source.find()
        if found is None:
            raise DatasetNotFoundError(
                f"dataset '{name}': apt-get installed {source.apt_package}, but its files are "
                f"not in {', '.join(source.system_dirs)}", name, source.root, source.files)
        return Fetched(name, str(found[0]), found[1], "installed with apt-get")
    elif apt and not source.apt_package:
        raise DatasetNotFoundError(
            f"dataset '{name}': --apt: no OS package ships it. {source.how_to_get()}.",
            name, source.root, source.files)
    source.check()  # downloads with torchvision, or raises the one-line error
    clear_dataset_cache()
    found = source.find()
    assert found is not None
    return Fetched(name, str(found[0]), "torchvision", "downloaded")


def _apt_install(source: _FileSource) -> None:
    package = source.apt_package
    if not apt_available():
        raise DatasetNotFoundError(
            f"dataset '{source.name}': --apt needs apt-get (Debian/Ubuntu), which is not on "
            f"this system. {source.how_to_get()}.", source.name, source.root, source.files)
    prefix: list[str] = []
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        if shutil.which("sudo") is None:
            raise DatasetNotFoundError(
                f"dataset '{source.name}': --apt: apt-get install {package} needs root and "
                f"sudo is not available; run it as root", source.name, source.root,
                source.files)
        prefix = ["sudo"]
    install = [*prefix, "apt-get", "install", "-y", "-q", package]
    result = _run(install)
    if result.returncode != 0:  # e.g. empty package lists on a fresh container
        _run([*prefix, "apt-get", "update", "-q"])
        result = _run(install)
    if result.returncode != 0:
        lines = (result.stderr or result.stdout or "").strip().splitlines()
        why = lines[-1] if lines else f"exit code {result.returncode}"
        raise DatasetNotFoundError(
            f"dataset '{source.name}': {' '.join(install)} failed ({why})", source.name,
            source.root, source.files)


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(command, capture_output=True, text=True, env=env, check=False)
