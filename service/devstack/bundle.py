"""Where the files devstack ships for the cluster side are: the feature-release chart and argocd/.

One source of truth: they live at the top of the repository (``templates/feature-release``,
``argocd/``). A wheel carries a copy made at build time (``setup.py`` copies them into
``devstack/_bundle/`` of the wheel, laid out like the repository); a source checkout or an editable
install reads them in place. Only the standard library here: the build and ``render`` use it too.
"""

from __future__ import annotations

from pathlib import Path

CHART = "templates/feature-release"
ARGOCD_FILES = ("appproject.yaml", "applicationset.yaml", "applicationset-namespaces.yaml")
BUNDLED = "_bundle"


def is_root(path: Path) -> bool:
    """Whether ``path`` is laid out like the repository (argocd/ and the chart)."""
    return (path / CHART / "Chart.yaml").is_file() and all((path / "argocd" / name).is_file() for name in ARGOCD_FILES)


def bundle_root() -> Path:
    """The directory holding ``argocd/`` and ``templates/feature-release``: the copy inside an installed
    wheel, else the source checkout this module is part of."""
    here = Path(__file__).resolve().parent
    for candidate in (here / BUNDLED, here.parents[1]):
        if is_root(candidate):
            return candidate
    raise FileNotFoundError(
        f"devstack's chart and argocd/ are missing: neither {here / BUNDLED} (an installed wheel) nor "
        f"{here.parents[1]} (a source checkout) holds them; reinstall devstack"
    )


def bundle_files(root: Path) -> dict[str, Path]:
    """``{path relative to root: file}`` of everything a build copies (the chart and argocd/*.yaml)."""
    files = {f"argocd/{name}": root / "argocd" / name for name in ARGOCD_FILES}
    chart = root / CHART
    for path in sorted(chart.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            files[path.relative_to(root).as_posix()] = path
    return files
