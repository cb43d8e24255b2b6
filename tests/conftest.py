"""Test configuration: strict rank promotion, float32 and helpers shared by the tests."""

import contextlib
import os
import shutil
import tempfile
import zlib

# One persistent compilation cache for the whole run, shared by the xdist workers and by the
# processes the tests start (the CLI, the interrupted and resumed runs): a program compiled
# by one is loaded by the others. Time only: a cached executable is the one XLA compiled.
# (set by the controller, which loads this file before it starts the workers: they inherit it)
_OWN_CACHE = "RNNJAX_TEST_JAX_CACHE" not in os.environ  # made here: removed at the end
JAX_CACHE = os.environ.setdefault(
    "RNNJAX_TEST_JAX_CACHE",
    os.path.join(tempfile.gettempdir(), f"rnnjax-test-jax-cache-{os.getpid()}"),
)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", JAX_CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
# The tests run small shapes, where compiling costs more than running: XLA's optimisation
# passes are skipped (a third less CPU), here and in the processes the tests start, so that a
# run killed in one process and resumed in another is still compared within one mode. Results
# are compared with tolerances or within that mode. The notebooks' kernels compile as a
# user's do (tests/test_notebooks.py): a notebook's seeded training run is the one its prose
# describes.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import jax  # noqa: E402  (reads the cache settings above)
import jax.numpy as jnp  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

import rnnjax as rj  # noqa: E402  (after the config update on purpose)
from rnnjax.analysis import _lanczos_cpu  # noqa: E402
from rnnjax.kernels import fused_cpu  # noqa: E402

# The C++ kernels are built explicitly, never inside a trace (make does it at install); without
# a compiler the fused_cpu tests skip through its support predicate, the native Lanczos tests
# through theirs.
for build in (fused_cpu.build, _lanczos_cpu.LIBRARY.build):
    with contextlib.suppress(RuntimeError):
        build()

# Every cell variant the library offers, built small; tests parametrise over these names.
CELL_FACTORIES = {
    "simple_rnn": lambda H: rj.simple_rnn(H),
    "simple_rnn_relu": lambda H: rj.simple_rnn(H, activation="relu"),
    "lstm": lambda H: rj.lstm(H),
    "lstm_peephole": lambda H: rj.lstm(H, peephole=True, peephole_init=_normal),
    "lstm_coupled": lambda H: rj.lstm(H, coupled=True),
    "lstm_peephole_coupled": lambda H: rj.lstm(
        H, peephole=True, coupled=True, peephole_init=_normal
    ),
    "gru": lambda H: rj.gru(H),
    "gru_cho": lambda H: rj.gru(H, reset_after=False),
    "multiplicative_rnn": lambda H: rj.multiplicative_rnn(H, factors=H + 1),
}

_normal = jax.nn.initializers.normal(0.5)


def random_like(key, tree, scale=0.5):
    """Replaces every leaf of ``tree`` with fresh N(0, scale²) values (so no bias is zero)."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten(
        [
            scale * jax.random.normal(k, jnp.shape(x), jnp.float32)
            for k, x in zip(keys, leaves, strict=True)
        ]
    )


def assert_close(got, want, rtol):
    """Every leaf within rtol of the reference, relative to the leaf's largest magnitude.

    A gradient entry is a sum of terms of either sign, so it carries the rounding of the
    largest terms: a few ulps of the leaf's scale, whatever its own size (two loops that
    evaluate the same step in differently fused XLA code differ in the last bit).
    """
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert g.shape == w.shape
        scale = float(jnp.max(jnp.abs(w))) + 1e-30
        err = float(jnp.max(jnp.abs(g.astype(jnp.float32) - w.astype(jnp.float32))))
        assert err <= rtol * scale, f"max error {err:.3g} > {rtol} x {scale:.3g}"


def seed_of(nodeid: str) -> int:
    """The seed of a test: a stable 31-bit hash (CRC-32) of its pytest node id.

    The node id ("tests/test_cells.py::test_x[lstm]") does not depend on the machine, the
    Python version, the working directory or the order in which tests run, so a failing
    test draws the same numbers when it is run again, alone or in the whole suite.
    """
    return zlib.crc32(nodeid.encode()) & 0x7FFFFFFF


@pytest.fixture
def run_on_devices():
    """Runs ``python -c script *args`` with N simulated CPU devices; returns its last line's JSON.

    The device count must be set before JAX starts, hence a fresh process. Usage:
    ``report = run_on_devices(SCRIPT, str(tmp_path), devices=4)``.
    """
    import json
    import subprocess
    import sys

    def run(script: str, *args: str, devices: int = 4):
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
        result = subprocess.run(
            [sys.executable, "-c", script, *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout.strip().splitlines()[-1])

    return run


@pytest.fixture
def rng(request):
    """A key per test, ``jax.random.key(seed_of(node id))``; reported when the test fails."""
    seed = seed_of(request.node.nodeid)
    request.node.user_properties.append(("rng_seed", seed))
    return jax.random.key(seed)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Adds an "rng seed" section to the report of a failed test that used the fixture."""
    report = yield
    seeds = [value for name, value in item.user_properties if name == "rng_seed"]
    if report.failed and seeds:
        report.sections.append(
            ("rng seed", f"{item.nodeid} drew from jax.random.key({seeds[0]}) (seed_of(node id))")
        )
    return report


def pytest_sessionfinish(session):
    """The process that made the run's compilation cache (the controller) removes it."""
    if _OWN_CACHE:
        shutil.rmtree(JAX_CACHE, ignore_errors=True)
