"""Versioning the tiny pipeline's outputs with DVC, as users type it (the session's `built`
workspace, copied and pushed once by `scripts/push.sh`):

- the round trip: in a fresh clone, plain `dvc pull`, then `snakemake -n` has nothing to do,
  while a params edit reruns exactly what depends on it; `scripts/pull.sh` keeps both true;
- a remote that a team shares: `dvc push` / `dvc pull` through an SSH remote (dvc-ssh) against
  a real `sshd` started on localhost for the test (skipped, with the reason, where `sshd`
  cannot be installed or started).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import subprocess
import time

import pytest
import yaml

from tests.test_pipeline import DECOMPILER, planned_jobs
from tests.tiny import BIN, ENV, pipeline_outputs, run, snakemake

# The `built` workspace's worker (see test_pipeline.py).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("pipeline")]


def commit(ws, *paths):
    run(["git", "add", *paths], ws)
    run(["git", "-c", "user.email=ci@example.org", "-c", "user.name=ci", "commit", "-qm", "data"], ws)


@pytest.fixture(scope="module")
def pushed(built, tmp_path_factory):
    """A copy of `built` after `scripts/push.sh` to a local remote, its record committed to git:
    (workspace, remote). Treat it as read-only."""
    ws = shutil.copytree(built, tmp_path_factory.mktemp("pushed") / "ws", symlinks=True)
    remote = ws.parent / "remote"
    run([str(BIN / "dvc"), "remote", "modify", "--local", "local", "url", str(remote)], ws)
    run(["bash", "scripts/push.sh"], ws)
    commit(ws, "dvc.yaml", "dvc.lock", "snakemake-metadata.dvc")
    return ws, remote


def clone_of(ws, dest: pathlib.Path) -> pathlib.Path:
    run(["git", "clone", "-q", str(ws), str(dest)], dest.parent)
    assert not (dest / "data").exists() and not (dest / ".snakemake").exists()
    return dest


def with_params(ws, edit):
    """Dry-run jobs of `everything` (test_pipeline.planned_jobs) with params.yaml edited."""
    original = (ws / "params.yaml").read_text()
    p = yaml.safe_load(original)
    edit(p)
    try:
        (ws / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
        return planned_jobs(ws)
    finally:
        (ws / "params.yaml").write_text(original)


def steps_7(p):
    p["decompiler"]["train"]["steps"] = 7


def test_plain_dvc_pull_leaves_snakemake_nothing_to_do(pushed, built, tmp_path):
    ws, remote = pushed
    lock = yaml.safe_load((ws / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(yaml.safe_load((ws / "dvc.yaml").read_text())["stages"])
    assert all(o.get("md5") for s in lock["stages"].values() for o in s["outs"])
    assert "md5" in yaml.safe_load((ws / "snakemake-metadata.dvc").read_text())["outs"][0]

    clone = clone_of(ws, tmp_path / "clone")
    run([str(BIN / "dvc"), "remote", "modify", "--local", "local", "url", str(remote)], clone)
    run([str(BIN / "dvc"), "pull"], clone)
    assert pipeline_outputs(clone) == pipeline_outputs(built)
    out = snakemake(clone, "-n").stdout  # the default target
    print("snakemake -n:", out.strip(), sep="\n")
    assert "Nothing to be done" in out
    # A params edit reruns exactly what depends on it, in all of `everything`; an input
    # rewritten with the same bytes (newer mtime, same checksum) reruns nothing.
    vocab = clone / "data" / "vocab.json"
    vocab.write_bytes(vocab.read_bytes())
    assert with_params(clone, steps_7) == DECOMPILER

    # The wrapper: pulls (nothing new), checks `dvc status`, `snakemake --touch`; records kept.
    (clone / ".venv").symlink_to(BIN.parent)  # scripts use .venv/bin
    run(["bash", "scripts/pull.sh"], clone)
    assert with_params(clone, steps_7) == DECOMPILER


def _find_sshd() -> str | None:
    for cand in (shutil.which("sshd"), "/usr/sbin/sshd", "/usr/local/sbin/sshd"):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


def _install_sshd() -> str:
    """Why sshd could not be installed ('' when it was)."""
    if os.geteuid() != 0:
        return "sshd is not installed and installing it needs root (apt-get install openssh-server)"
    if not shutil.which("apt-get"):
        return "sshd is not installed and there is no apt-get to install openssh-server"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "openssh-server"]
    try:
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=300)
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return "apt-get install openssh-server timed out"
    if res.returncode != 0:
        return f"apt-get install openssh-server failed: {res.stderr.strip()[-300:]}"
    return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def sshd(tmp_path):
    """An sshd on a free localhost port with its own config, host key and authorized key in a
    temp dir; yields (port, user, client key, HOME whose .ssh/known_hosts trusts it). Killed by
    pid at the end."""
    pytest.importorskip("dvc_ssh", reason="dvc-ssh is not installed (pip install -r requirements.lock)")
    exe = _find_sshd()
    if exe is None:
        why = _install_sshd()
        exe = _find_sshd()
        if exe is None:
            pytest.skip(why or "openssh-server installed but no sshd found")
    d = tmp_path / "sshd"
    d.mkdir()
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)],
                       check=True, capture_output=True)
    shutil.copy(d / "client_key.pub", d / "authorized_keys")
    user = os.environ.get("USER") or __import__("pwd").getpwuid(os.geteuid()).pw_name
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\n"
        f"PidFile {d / 'sshd.pid'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        "PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
        "Subsystem sftp internal-sftp\n")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation directory
    proc = subprocess.Popen([exe, "-D", "-e", "-f", str(d / "sshd_config")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                pytest.skip(f"sshd did not start: {proc.stdout.read().strip()[-500:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.skip("sshd did not listen within 20 s")
                time.sleep(0.1)
        home = d / "home"
        (home / ".ssh").mkdir(parents=True)
        host_pub = (d / "host_key.pub").read_text().split()
        (home / ".ssh" / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
        yield port, user, d / "client_key", home
    finally:
        proc.kill()  # this test's sshd, by its pid
        proc.wait()


def dvc(cwd, *args, home):
    """`dvc ARGS` in `cwd` with HOME=`home` (its .ssh/known_hosts trusts the test's sshd)."""
    res = subprocess.run([str(BIN / "dvc"), *args], cwd=cwd, env=dict(ENV, HOME=str(home)),
                         capture_output=True, text=True)
    assert res.returncode == 0, f"dvc {args} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def test_ssh_remote_push_clone_pull(pushed, built, sshd, tmp_path):
    """The team's remote over SSH: push (push.sh's last step, after `dvc commit`), a fresh
    clone, `dvc pull`, and `snakemake -n` has nothing to do."""
    port, user, key, home = sshd
    store = tmp_path / "team-store"
    ws = shutil.copytree(pushed[0], tmp_path / "ws", symlinks=True)
    # What a team commits: the remote's URL. What each member keeps in .dvc/config.local: who
    # they log in as and with which key.
    dvc(ws, "remote", "add", "-d", "team", f"ssh://127.0.0.1:{port}{store}", home=home)
    dvc(ws, "remote", "modify", "--local", "team", "user", user, home=home)
    dvc(ws, "remote", "modify", "--local", "team", "keyfile", str(key), home=home)
    res = dvc(ws, "push", home=home)
    print("dvc push:", res.stdout.strip(), res.stderr.strip(), sep="\n")
    assert any(p.is_file() for p in store.rglob("*")), "nothing reached the SSH remote"
    commit(ws, ".dvc/config")

    clone = clone_of(ws, tmp_path / "clone")
    dvc(clone, "remote", "modify", "--local", "team", "user", user, home=home)
    dvc(clone, "remote", "modify", "--local", "team", "keyfile", str(key), home=home)
    res = dvc(clone, "pull", home=home)
    print("dvc pull:", res.stdout.strip()[-2000:], res.stderr.strip(), sep="\n")
    assert pipeline_outputs(clone) == pipeline_outputs(built)
    out = snakemake(clone, "-n").stdout
    print("snakemake -n:", out.strip(), sep="\n")
    assert "Nothing to be done" in out
