"""sdlib bundle: what goes in comes out checked, in parts of the chosen size; a damaged or missing part, or a
manifest that does not match, is one clear error and nothing is unpacked."""

import os
import subprocess

import pytest

from sdlib.bundle import MANIFEST, Manifest, check, create, join, parse_size
from sdlib.data import OFFLINE_SHA256, offline_file
from sdlib.errors import SdlibError
from sdlib.provenance import file_sha256
from tests.conftest import ROOT, hang_guard

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("b") / "bundle"
    manifest = create(out, models=[], data=True, part_size=2**20)
    return out, manifest


def test_data_round_trips_through_parts_of_the_chosen_size(bundle, tmp_path):
    out, manifest = bundle
    sizes = [p.bytes for p in manifest.parts]
    assert len(sizes) >= 2 and all(s == 2**20 for s in sizes[:-1]) and 0 < sizes[-1] <= 2**20
    assert sum(sizes) == manifest.bytes and sorted(manifest.data) == sorted(OFFLINE_SHA256)
    assert Manifest.read(out) == manifest
    env = join(out, tmp_path / "there")
    assert env == {"SDLIB_DATA_DIR": str((tmp_path / "there" / "data").resolve())}
    for relative in OFFLINE_SHA256:  # byte for byte what was bundled
        assert file_sha256(tmp_path / "there" / "data" / relative) == file_sha256(offline_file(relative, relative))


def test_a_damaged_or_missing_part_is_named_and_nothing_is_unpacked(bundle, tmp_path):
    out, manifest = bundle
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in [*(out / part.file for part in manifest.parts), out / MANIFEST]:
        (copy / p.name).write_bytes(p.read_bytes())
    damaged = copy / manifest.parts[1].file
    data = bytearray(damaged.read_bytes())
    data[100] ^= 1
    damaged.write_bytes(bytes(data))
    with pytest.raises(SdlibError, match=f"{manifest.parts[1].file} is damaged"):
        join(copy, tmp_path / "there")
    assert not (tmp_path / "there").exists()
    damaged.unlink()
    with pytest.raises(SdlibError, match=f"{manifest.parts[1].file} is missing"):
        check(copy)
    (copy / MANIFEST).write_text("{}")
    with pytest.raises(SdlibError, match="not a bundle manifest"):
        check(copy)
    assert [p.name for p in tmp_path.iterdir()] == ["copy"]  # no temporary folder left behind


def test_refusals(bundle, tmp_path):
    out, _ = bundle
    with pytest.raises(SdlibError, match="is not empty"):
        create(out, data=True)
    (tmp_path / "exists").mkdir()
    with pytest.raises(SdlibError, match="exists already"):
        join(out, tmp_path / "exists")
    assert parse_size("60M") == 60 * 2**20 and parse_size("1.5G") == int(1.5 * 2**30)
    for bad in ("sixty", "10K"):
        with pytest.raises(SdlibError):
            parse_size(bad)


def test_the_command_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def sdlib(*args):
        return subprocess.run([os.sys.executable, "-m", "sdlib", "bundle", *args], capture_output=True, text=True,
                              env=env, timeout=hang_guard(300), cwd=ROOT)

    done = sdlib("create", str(tmp_path / "b"), "--models", "", "--part-size", "1M")
    assert done.returncode == 0 and "Copy the folder to the other machine" in done.stdout, done.stderr[-2000:]
    done = sdlib("join", str(tmp_path / "b"), "--into", str(tmp_path / "there"))
    assert done.returncode == 0 and f"export SDLIB_DATA_DIR={(tmp_path / 'there' / 'data').resolve()}" in done.stdout
    bad = sdlib("create", str(tmp_path / "c"), "--part-size", "lots")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "is not a size" in bad.stderr
