"""Everything a machine without network needs to run sdlib, in parts of a chosen size: the built-in models' GGUF
files, the offline data copies and, if asked, wheels of packages its Python lacks.

    sdlib bundle create OUT --models qwen2.5-coder-0.5b-instruct --part-size 60M     # here, with network and the models
    sdlib bundle join OUT --into DEST                                       # there: check every part, unpack

A bundle is one tar stream cut into ``bundle.tar.000``, ``bundle.tar.001``, ... and a ``manifest.json`` that
gives each part's size and sha256, the whole stream's, and what the tar holds (``gguf/``, ``data/``,
``wheels/``). ``join`` checks every part against the manifest before it unpacks anything, unpacks into a
temporary folder next to DEST with tar's ``data`` filter (no links out, no absolute paths, no devices), checks each
GGUF against the model's published sha256, and only then moves the folder into place; it prints the variables
that point sdlib at what it unpacked (``SDLIB_GGUF_DIR``, ``SDLIB_DATA_DIR``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sdlib.data import OFFLINE_SHA256, offline_file
from sdlib.errors import SdlibError
from sdlib.packaged import gguf_path, packaged
from sdlib.provenance import file_sha256, write_json

MANIFEST = "manifest.json"
PART_PREFIX = "bundle.tar."
DEFAULT_PART_SIZE = 60 * 2**20


@dataclass
class Part:
    file: str
    bytes: int
    sha256: str


@dataclass
class Manifest:
    """What a bundle holds and how to check it."""

    part_size: int
    parts: list[Part]
    bytes: int
    """the whole tar stream's size"""
    sha256: str
    """the whole tar stream's sha256"""
    models: dict[str, str] = field(default_factory=dict)
    """built-in model name -> its GGUF file under gguf/"""
    data: list[str] = field(default_factory=list)
    """offline data files under data/ (paths as under SDLIB_DATA_DIR)"""
    wheels: list[str] = field(default_factory=list)
    """wheel files under wheels/"""
    format: int = 1

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        path = folder / MANIFEST
        if not path.is_file():
            raise SdlibError(f"{folder} holds no {MANIFEST}: point at the folder `sdlib bundle create` wrote")
        try:
            raw = json.loads(path.read_text())
            raw["parts"] = [Part(**p) for p in raw["parts"]]
            manifest = cls(**raw)
        except (ValueError, TypeError, KeyError) as e:
            raise SdlibError(f"{path} is not a bundle manifest ({e}): create the bundle again") from None
        if manifest.format != 1:
            raise SdlibError(f"{path}: bundle format {manifest.format} is not one this sdlib reads (1)")
        return manifest


def parse_size(text: str) -> int:
    """``60M``, ``1.5G``, ``512K`` or a number of bytes -> bytes (M and G are MiB and GiB)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)i?B?\s*", str(text), re.IGNORECASE)
    if not match:
        raise SdlibError(f"part size {text!r} is not a size: write e.g. 60M, 1G or 50000000")
    value = float(match.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[match.group(2).upper()]
    if value < 2**20:
        raise SdlibError(f"part size {text} is below 1 MiB: choose a larger one")
    return int(value)


class _PartWriter:
    """A write-only file that cuts what it is given into parts of ``part_size`` bytes, hashing as it goes."""

    def __init__(self, folder: Path, part_size: int):
        self.folder, self.part_size = folder, part_size
        self.parts: list[Part] = []
        self.whole = hashlib.sha256()
        self.total = 0
        self._file, self._digest, self._size = None, None, 0

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            if self._file is None:
                name = f"{PART_PREFIX}{len(self.parts):03d}"
                self._file, self._digest, self._size = open(self.folder / name, "wb"), hashlib.sha256(), 0
                self.parts.append(Part(name, 0, ""))
            take = view[: self.part_size - self._size]
            self._file.write(take)
            self._digest.update(take)
            self.whole.update(take)
            self._size += len(take)
            self.total += len(take)
            view = view[len(take):]
            if self._size == self.part_size:
                self._close_part()
        return len(data)

    def _close_part(self) -> None:
        self._file.close()
        self.parts[-1] = Part(self.parts[-1].file, self._size, self._digest.hexdigest())
        self._file = None

    def close(self) -> None:
        if self._file is not None:
            self._close_part()


class _PartReader:
    """A read-only file over the parts, in order."""

    def __init__(self, paths: list[Path]):
        self._paths, self._file = list(paths), None

    def read(self, n: int = -1) -> bytes:
        out = b""
        while n < 0 or len(out) < n:
            if self._file is None:
                if not self._paths:
                    break
                self._file = open(self._paths.pop(0), "rb")
            block = self._file.read(-1 if n < 0 else n - len(out))
            if not block:
                self._file.close()
                self._file = None
                continue
            out += block
        return out


def download_wheels(requirements: Iterable[str], folder: Path, python_version: str) -> list[Path]:
    """``pip download`` binary wheels of ``requirements`` (no dependencies) for CPython ``python_version`` on
    x86-64 Linux into ``folder``."""
    platforms = [f"--platform=manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34, 35)] + [
        "--platform=manylinux2014_x86_64"]
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                           f"--python-version={python_version}", "--implementation=cp", *platforms, "-d", str(folder),
                           *requirements], capture_output=True, text=True)
    if done.returncode != 0:
        raise SdlibError(f"pip could not download the wheels: {done.stderr.strip().splitlines()[-1:]}")
    return sorted(folder.glob("*.whl"))


def create(out: str | Path, models: Iterable[str] = (), data: bool = True, wheels: Iterable[str] = (),
           python_version: str = "3.12", part_size: int = DEFAULT_PART_SIZE) -> Manifest:
    """Write a bundle of ``models`` (built-in names), the offline data (``data``) and wheels of ``wheels``
    (pip requirements) into the empty or new folder ``out``. -> its manifest (also ``out/manifest.json``)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise SdlibError(f"{out} is not empty: choose a new folder for the bundle")
    models, wheels = list(models), list(wheels)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".bundle-", dir=out.parent))
    try:
        files: dict[str, Path] = {}  # name in the tar -> file here
        manifest_models = {}
        for name in models:
            model = packaged(name)
            files[f"gguf/{model.gguf_file}"] = gguf_path(model, staging / "gguf")  # joined and checked here
            manifest_models[name] = model.gguf_file
        data_files = []
        if data:
            for relative in OFFLINE_SHA256:
                path = offline_file(relative, relative)
                if path is None:
                    raise SdlibError("SDLIB_DATA_DIR is unset or incomplete: point it at the offline data to bundle it "
                                     "(or pass --no-data)")
                files[f"data/{relative}"] = path
                data_files.append(relative)
        wheel_files = download_wheels(wheels, staging / "wheels", python_version) if wheels else []
        for wheel in wheel_files:
            files[f"wheels/{wheel.name}"] = wheel
        writer = _PartWriter(out, part_size)
        with tarfile.open(fileobj=writer, mode="w|") as tar:
            for arcname, path in files.items():
                tar.add(path, arcname=arcname)
        writer.close()
        manifest = Manifest(part_size=part_size, parts=writer.parts, bytes=writer.total, sha256=writer.whole.hexdigest(),
                            models=manifest_models, data=data_files, wheels=[w.name for w in wheel_files])
        write_json(out / MANIFEST, asdict(manifest))
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # nothing half-written is left behind
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def check(folder: str | Path) -> Manifest:
    """Every part of the bundle in ``folder`` is there with its size and sha256, and they join into the stream
    the manifest names; one line naming the first part that is not."""
    folder = Path(folder)
    manifest = Manifest.read(folder)
    whole = hashlib.sha256()
    for part in manifest.parts:
        path = folder / part.file
        if not path.is_file():
            raise SdlibError(f"{path} is missing ({len(manifest.parts)} parts in the bundle): copy it there and join again")
        if path.stat().st_size != part.bytes or file_sha256(path) != part.sha256:
            raise SdlibError(f"{path} is damaged (size or sha256 differs from {MANIFEST}): copy it again")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                whole.update(block)
    if whole.hexdigest() != manifest.sha256:
        raise SdlibError(f"the parts in {folder} do not join into the bundle its {MANIFEST} describes: create it again")
    return manifest


def join(folder: str | Path, into: str | Path) -> dict[str, str]:
    """Check the bundle in ``folder`` (``check``), unpack it into ``into`` and check each GGUF against its
    model's published sha256. -> the environment variables that point sdlib at it."""
    folder, into = Path(folder), Path(into)
    manifest = check(folder)
    if into.exists():
        raise SdlibError(f"{into} exists already: join into a new folder (or remove it first)")
    into.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{into.name}-", dir=into.parent))
    try:
        with tarfile.open(fileobj=_PartReader([folder / p.file for p in manifest.parts]), mode="r|") as tar:
            tar.extractall(work, filter="data")  # no links or paths outside the folder, no devices
        for name, gguf_file in manifest.models.items():
            model = packaged(name)
            path = work / "gguf" / gguf_file
            if not path.is_file() or path.stat().st_size != model.size or file_sha256(path) != model.sha256:
                raise SdlibError(f"{name}: the unpacked {gguf_file} is not the published file: create the bundle again")
        os.replace(work, into)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    env = {}
    if manifest.models:
        env["SDLIB_GGUF_DIR"] = str(into.resolve() / "gguf")
    if manifest.data:
        env["SDLIB_DATA_DIR"] = str(into.resolve() / "data")
    return env
