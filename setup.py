"""Package metadata for tllib-tune: Tune-mode ConvBN blocks for memory-lean transfer learning."""

import re
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = re.search(r'__version__ = "([^"]+)"', (here / "tllib_tune" / "__init__.py").read_text()).group(1)

setup(
    name="tllib-tune",
    version=version,
    description="Transfer learning with ConvBN blocks in Train / Eval / Tune / Deploy modes",
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["tllib_tune", "tllib_tune.*"]),
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "timm",
        "tqdm",
        "numpy",
        "tensorboard",
        "scipy",
    ],
    extras_require={
        "dev": ["pytest", "ruff", "matplotlib"],
        "plot": ["matplotlib"],
    },
    license="MIT",
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
