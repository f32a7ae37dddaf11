"""Build hook: ship the top-level ``configs/`` folder as package data ``jaxsched/configs``.

The folder stays where users and the README expect it (the repository root); a wheel carries a
copy inside the package, where :data:`jaxsched.config.CONFIG_DIR` finds it, so configs work by
name (``jaxsched simulate flow-control``) from an installed wheel too. Everything else is in
``pyproject.toml``.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class build_py_with_configs(build_py):  # noqa: N801 - setuptools' command naming
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the source checkout's configs/
        target = Path(self.build_lib) / "jaxsched" / "configs"
        shutil.copytree(ROOT / "configs", target, dirs_exist_ok=True,
                        ignore=lambda d, names: [n for n in names if not
                                                 (n.endswith(".toml") or (Path(d) / n).is_dir())])


setup(cmdclass={"build_py": build_py_with_configs})
