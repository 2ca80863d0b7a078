"""The hand-written package list in pyproject.toml must cover every geosr package."""

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_listed():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for p in (ROOT / "geosr").rglob("__init__.py")}
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
    assert cfg["package-dir"]["geosr.shipped_models"] == "models"


def test_shipped_models_install_with_a_plain_pip_install(tmp_path):
    """`pip install .` (not editable) carries models/ so `--model NAME` finds them."""
    import os
    import subprocess
    import sys
    import zipfile

    import pytest

    shipped = sorted(p.relative_to(ROOT / "models").as_posix()
                     for p in (ROOT / "models").glob("*/*.geosr"))
    if not shipped:
        pytest.skip("no shipped model in models/")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "w"),
         str(ROOT)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next((tmp_path / "w").glob("geosr-*.whl"))
    from geosr import __version__

    assert wheel.name.startswith(f"geosr-{__version__}-")  # the dynamic version
    names = set(zipfile.ZipFile(wheel).namelist())
    for rel in shipped:
        assert f"geosr/shipped_models/{rel}" in names
        card = rel.rsplit("/", 1)[0] + "/README.md"
        assert f"geosr/shipped_models/{card}" in names
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    name = shipped[0].split("/")[0]
    code = ("import geosr, sys; from geosr.model.registry import resolve_model; "
            "from geosr.model.bundle import load_bundle; "
            f"p = resolve_model({name!r}); b = load_bundle(p); "
            "print(geosr.__file__); print(p); print(b.factor)")
    env = dict(os.environ, PYTHONPATH=str(target))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    module, path, _ = run.stdout.splitlines()
    assert module.startswith(str(target)) and path.startswith(str(target))


def test_version_has_one_source(tmp_path):
    """pyproject takes the version from geosr.__version__; it states none of its own."""
    import shutil

    from setuptools.config.pyprojecttoml import read_configuration

    import geosr

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in cfg["project"] and "version" in cfg["project"]["dynamic"]
    assert cfg["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "geosr.__version__"}
    assert read_configuration(ROOT / "pyproject.toml")["project"]["version"] == geosr.__version__
    # setuptools reads it from the file (statically): another value there is the version
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "geosr").mkdir()
    (tmp_path / "geosr" / "__init__.py").write_text('__version__ = "9.8.7"\n')
    assert read_configuration(tmp_path / "pyproject.toml")["project"]["version"] == "9.8.7"
