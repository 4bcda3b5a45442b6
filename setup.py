"""Everything is in pyproject.toml; this only copies the chart and argocd/ into the wheel.

``templates/feature-release`` and ``argocd/`` stay where they are (one source of truth, used by the
tests, the docs and Argo CD users pointing at this repository); a wheel gets a copy of them in
``devstack/_bundle/`` so ``devstack bootstrap`` and ``devstack render`` work from an installed package.
An editable install reads them in place (devstack.bundle.bundle_root).
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def _bundle_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("_devstack_bundle", ROOT / "service" / "devstack" / "bundle.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildWithBundle(build_py):
    """build_py, plus the chart and argocd/ copied into ``devstack/_bundle`` of the build."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the checkout in place
        bundle = _bundle_module()
        target = Path(self.build_lib) / "devstack" / bundle.BUNDLED
        shutil.rmtree(target, ignore_errors=True)
        for relative, source in bundle.bundle_files(ROOT).items():
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, destination)


setup(cmdclass={"build_py": BuildWithBundle})
