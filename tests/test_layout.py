"""The package's layout holds: dependencies point one way, the library stays quiet and
free of the CLI's toolkit, pure modules stay pure, and every import is declared."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "geosr"


def modules() -> list[Path]:
    return sorted(PKG.rglob("*.py"))


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def in_cli(path: Path) -> bool:
    return path.relative_to(PKG).parts[0] == "cli"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def imports(path: Path) -> tuple[str, ...]:
    """Every module a file imports, anywhere in it (function-level imports included),
    as absolute dotted names; ``from geosr.io import read`` gives ``geosr.io`` and
    ``geosr.io.read``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else \
        _module_name(path).rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")
                up = up[:len(up) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            out.append(base)
            if base == "geosr" or base.startswith("geosr."):  # the name may be a module
                out += [f"{base}.{a.name}" for a in node.names]
    return tuple(out)


# --------------------------------------------------------------------------- direction

PURE = {  # module: the geosr modules it may import
    "geosr/arrays.py": set(),
    "geosr/evaluate/metrics.py": {"geosr.errors", "geosr.arrays"},
    "geosr/grid.py": {"geosr.errors"},
    "geosr/units.py": {"geosr.errors"},
    "geosr/timerange.py": {"geosr.errors"},
}


@pytest.mark.parametrize("name", sorted(PURE))
def test_leaf_modules_import_no_other_geosr_module(name):
    allowed = PURE[name]
    extra = sorted(m for m in imports(ROOT / name) if m.startswith("geosr.")
                   and not any(m == a or m.startswith(f"{a}.") for a in allowed))
    assert not extra, f"{name} imports {extra}; it may import only {sorted(allowed)}"


@pytest.mark.parametrize("module", ["geosr.evaluate.metrics", "geosr.arrays", "geosr.units",
                                    "geosr.timerange"])
def test_pure_modules_load_without_gdal_torch_or_the_cli(module):
    heavy = ["rasterio", "torch", "typer", "rich", "matplotlib"]
    code = (f"import sys, {module}; bad = sorted(m for m in {heavy!r} if m in sys.modules); "
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert res.returncode == 0, f"importing {module} loads {res.stdout.strip()}{res.stderr}"


def test_only_the_cli_uses_typer_and_rich():
    bad = [f"{rel(p)}: {m}" for p in modules() if not in_cli(p) for m in imports(p)
           if m.split(".")[0] in {"typer", "rich", "click"}]
    assert not bad, "the library must not import the CLI toolkit:\n" + "\n".join(bad)


def test_nothing_but_main_imports_the_cli():
    allowed = {PKG / "__main__.py"}
    bad = [f"{rel(p)}: {m}" for p in modules() if not in_cli(p) and p not in allowed
           for m in imports(p) if m == "geosr.cli" or m.startswith("geosr.cli.")]
    assert not bad, "the CLI sits on top of the library:\n" + "\n".join(bad)


def test_the_library_never_prints():
    bad = []
    for p in modules():
        if in_cli(p) or p.name == "__main__.py":
            continue
        tree = ast.parse(p.read_text(encoding="utf-8"))
        bad += [f"{rel(p)}:{n.lineno}" for n in ast.walk(tree)
                if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                and n.func.id == "print"]
    assert not bad, "library code logs (logging.getLogger(__name__)), never prints:\n" + \
        "\n".join(bad)


ONE_HOME = {  # a name defined in one module only
    "block_mean": "geosr/arrays.py", "block_count": "geosr/arrays.py",
    "conserve_blocks": "geosr/arrays.py", "mask_nodata_blocks": "geosr/arrays.py",
    "fill_nearest": "geosr/arrays.py", "compute_all": "geosr/evaluate/metrics.py",
    "ReaderCache": "geosr/io/read.py",
}


def test_shared_operations_are_defined_once():
    found: dict[str, list[str]] = {}
    for p in modules():
        for n in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in ONE_HOME:
                found.setdefault(n.name, []).append(rel(p))
    assert found == {k: [v] for k, v in ONE_HOME.items()}


# --------------------------------------------------------------------------- dependencies

DISTRIBUTION = {  # import name -> requirement that provides it
    "numpy": "numpy", "scipy": "scipy", "rasterio": "rasterio", "affine": "affine",
    "pyproj": "pyproj", "cftime": "cftime", "torch": "torch", "typer": "typer",
    "rich": "rich", "matplotlib": "matplotlib", "dask": "dask",
    "distributed": "dask[distributed]", "xarray": "xarray", "rioxarray": "rioxarray",
    "netCDF4": "netcdf4", "zarr": "zarr", "numcodecs": "numcodecs", "safetensors": "safetensors",
    "threadpoolctl": "threadpoolctl",
    # typer releases that do not vendor click depend on it; cli/_app.py falls back to it
    "click": "typer",
}


def _requirement(spec: str) -> set[str]:
    """``dask[distributed]>=2023.1`` -> {"dask", "dask[distributed]"} (normalised)."""
    m = re.match(r"\s*([A-Za-z0-9_.-]+)\s*(?:\[([^\]]*)\])?", spec)
    name = re.sub(r"[-_.]+", "-", m.group(1)).lower()
    extras = [e.strip().lower() for e in (m.group(2) or "").split(",") if e.strip()]
    return {name} | {f"{name}[{e}]" for e in extras}


def declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        specs += extra
    return set().union(*(_requirement(s) for s in specs))


def test_every_third_party_import_is_declared():
    have = declared()
    third = {}
    for p in modules():
        for m in imports(p):
            top = m.split(".")[0]
            if top and top != "geosr" and top not in sys.stdlib_module_names:
                third.setdefault(top, rel(p))
    unknown = sorted(t for t in third if t not in DISTRIBUTION)
    assert not unknown, (f"map these imports to their distribution in DISTRIBUTION: "
                         f"{[(t, third[t]) for t in unknown]}")
    missing = sorted(f"{t} ({third[t]}): {DISTRIBUTION[t]}" for t in third
                     if not _requirement(DISTRIBUTION[t]) <= have)
    assert not missing, "declare in pyproject [project] dependencies:\n" + "\n".join(missing)


def test_the_dependency_check_sees_imports():
    """The parser finds imports at any depth, relative ones included."""
    names = set(imports(PKG / "evaluate" / "validate.py"))
    assert {"numpy", "rasterio.enums", "geosr.evaluate.metrics", "geosr.baselines"} <= names
    assert {"numpy", "affine", "rasterio", "scipy"} <= {
        m.split(".")[0] for p in modules() for m in imports(p)}
