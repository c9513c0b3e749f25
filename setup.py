"""Package metadata for tllib-tune: Tune-mode ConvBN blocks for memory-lean transfer learning.

The shipped config files stay in the repository's configs/ (the documented place, next to examples/ and
scripts/); the wheel carries them as package data in tllib_tune/configs/ (package_dir maps the folder),
where tllib_tune.finetune.config_files finds them after `pip install`.
"""

import re
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
# configs/ and its sub-folders, installed as the data-only packages tllib_tune.configs(.paper ...)
CONFIG_PACKAGES = ["tllib_tune.configs"] + [
    "tllib_tune.configs." + ".".join(p.relative_to(here / "configs").parts)
    for p in sorted((here / "configs").rglob("*"))
    if p.is_dir()
]
version = re.search(r'__version__ = "([^"]+)"', (here / "tllib_tune" / "__init__.py").read_text()).group(1)

setup(
    name="tllib-tune",
    version=version,
    description="Transfer learning with ConvBN blocks in Train / Eval / Tune / Deploy modes",
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["tllib_tune", "tllib_tune.*"]) + CONFIG_PACKAGES,
    package_dir={"tllib_tune.configs": "configs"},
    package_data={name: ["*.yaml"] for name in CONFIG_PACKAGES},
    entry_points={"console_scripts": ["tllib-tune = tllib_tune.cli:main"]},
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "timm",
        "tqdm",
        "numpy",
        "tensorboard",
        "scipy",
        "PyYAML",
    ],
    extras_require={
        "dev": ["pytest", "pytest-xdist", "ruff", "matplotlib"],
        "plot": ["matplotlib"],
    },
    license="MIT",
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
