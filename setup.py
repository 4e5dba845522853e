"""Build the Cython core in ext/ and install the edgeshard packages.

Metadata lives in pyproject.toml; this file only knows how to compile.
Every ``ext/_*.pyx`` becomes an extension module ``ext._name``.

Environment switches (build time):
  EDGESHARD_CYTHON_DEBUG=1   bounds and wraparound checks on (for a debug test run)
  EDGESHARD_MARCH_NATIVE=1   -march=native (faster, but not portable: never for wheels you ship)
"""

import glob
import os

from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup

DEBUG = os.environ.get("EDGESHARD_CYTHON_DEBUG") == "1"

# No FMA contraction: the float kernels must match the NumPy reference bit for bit.
compile_args = ["-O3", "-ffp-contract=off"]
if os.environ.get("EDGESHARD_MARCH_NATIVE") == "1":
    compile_args.append("-march=native")

extensions = [
    Extension(
        "ext." + os.path.splitext(os.path.basename(path))[0],
        [path],
        include_dirs=["ext"],
        # C kernels built for several instruction sets (see ext/_resize_kernels.h)
        depends=sorted(glob.glob(os.path.join("ext", "*.h"))),
        extra_compile_args=compile_args,
    )
    for path in sorted(glob.glob(os.path.join("ext", "_*.pyx")))
]

directives = {
    "language_level": "3",
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
}

setup(
    # Every package and subpackage (a hand-kept list once missed new subpackages, and the
    # installed daemons failed to start); the shipped models are the edgeshard_models one.
    packages=[*find_packages(include=["edgeshard", "edgeshard.*", "edge_node", "edge_node.*",
                                      "protos", "ext", "coordinator", "coordinator.*"]),
              "edgeshard_models"],
    package_dir={"edgeshard_models": "models"},
    package_data={
        "ext": ["*.pyi", "*.pyx", "*.pxd", "py.typed"],
        "protos": ["*.proto", "*.pyi"],
        "edgeshard_models": [
            "repository/*.json", "repository/*/*.toml", "repository/*/*/*", "data/*", "*.md",
        ],
    },
    ext_modules=cythonize(extensions, compiler_directives=directives),
    zip_safe=False,
)
