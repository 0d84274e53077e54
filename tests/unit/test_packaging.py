"""The package list in pyproject.toml names every package the folders hold: setuptools installs
only the packages listed (the folders map to pipewave.* by package-dir), so a new subpackage left
out of the list would be missing from wheels and the image while the editable install still has it."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_folder_is_listed() -> None:
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {folder: name for name, folder in tool["package-dir"].items()}
    assert set(folders) == {"cli", "api", "service", "workers"}
    found = set()
    for folder, name in folders.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((name, *rel)))
    data_only = {name for name in tool["packages"] if name not in found}
    assert found <= set(tool["packages"]), sorted(found - set(tool["packages"]))
    # the packages without Python are the data folders named in package-data
    assert data_only == set(tool["package-data"]) == {"pipewave.api.static"}
    assert (ROOT / "api" / "static" / "index.html").is_file()
