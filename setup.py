"""Installs causalmix_jax (pip install -e .)."""

import pathlib

import setuptools

here = pathlib.Path(__file__).parent
requirements = [
    line.split("#")[0].strip()
    for line in (here / "requirements.txt").read_text().splitlines()
    if line.split("#")[0].strip() and not line.startswith("-")
]

setuptools.setup(
    name="causalmix_jax",
    version="0.1.0",
    description="Data-mixture selection for LM training by causal inference, in JAX.",
    long_description=(here / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    # The embedded default pool is a data directory: listed as a package of its own so
    # that its files travel with the wheel.
    packages=setuptools.find_packages(include=["causalmix_jax", "causalmix_jax.*"])
    + ["causalmix_jax.data.default_pool"],
    package_data={"causalmix_jax.data.default_pool": ["*"]},
    include_package_data=True,
    install_requires=requirements,
    extras_require={"test": ["pytest>=8,<10", "pytest-xdist>=3.8,<4",
                             "hypothesis>=6.100,<7"]},
)
