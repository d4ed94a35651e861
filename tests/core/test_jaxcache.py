"""Where the persistent compilation cache goes, per thread pool, and that it can be turned off."""

import json
import os
import pathlib
import subprocess
import sys

from metamodels.core import jaxcache


def test_cache_folder_follows_the_environment(tmp_path):
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path)}
    assert jaxcache.directory(env) == tmp_path / "xdg" / "metamodels" / "jax"
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "jax")
    assert jaxcache.directory(env) == tmp_path / "jax"
    env[jaxcache.ENV] = str(tmp_path / "mine")
    assert jaxcache.directory(env) == tmp_path / "mine"
    env[jaxcache.ENV] = "off"
    assert jaxcache.directory(env) is None and jaxcache.export(env) is None


def test_each_thread_pool_size_has_its_own_folder(tmp_path):
    assert jaxcache.pool_folder(tmp_path, {"PJRT_NPROC": "2"}) == tmp_path / "threads-2"
    assert jaxcache.pool_folder(tmp_path, {}) == tmp_path / "threads-all"
    # a child inherits its parent's folder but has its own pool
    assert jaxcache.pool_folder(tmp_path / "threads-2", {"PJRT_NPROC": "1"}) == \
        tmp_path / "threads-1"


def test_an_unwritable_folder_leaves_the_cache_off(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    env = {jaxcache.ENV: str(blocker / "jax")}
    assert jaxcache.enable(env) is None
    assert not pathlib.Path(blocker / "jax").exists()


def test_a_verb_stores_what_it_compiles_and_a_second_run_loads_it(tmp_path):
    """Two runs of a jitting verb in fresh processes with a 1-thread rule: the first writes
    executables into threads-1/, the second reads them (JAX's cache hit counter), and both
    compute the same bytes."""
    code = ("import json, sys, jax, jax.numpy as jnp\n"
            "from jax._src import monitoring\n"
            "hits = []\n"
            "monitoring.register_event_listener(lambda e, **kw: hits.append(e) "
            "if 'cache_hits' in e else None)\n"
            "f = jax.jit(lambda x: jnp.sin(x) @ x.T)\n"
            "y = f(jnp.arange(64.0).reshape(8, 8))\n"
            "print(json.dumps({'y': y.tolist(), 'hits': len(hits), "
            "'dir': jax.config.jax_compilation_cache_dir}))\n")
    env = dict(os.environ, **{jaxcache.ENV: str(tmp_path / "cache"), "PJRT_NPROC": "1",
                              # this toy compiles in well under MIN_COMPILE_S: store it anyway
                              "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"})
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    runs = []
    for _ in range(2):
        boot = "from metamodels.core import jaxcache\njaxcache.export()\n"
        out = subprocess.run([sys.executable, "-c", boot + code], env=env, capture_output=True,
                             text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    assert runs[0]["dir"] == str(tmp_path / "cache" / "threads-1")
    assert any((tmp_path / "cache" / "threads-1").iterdir())
    assert runs[0]["hits"] == 0 and runs[1]["hits"] >= 1
    assert runs[0]["y"] == runs[1]["y"]
