"""Isolation and permissions.

* The pool file and ``shared.json`` are 0600 and the pool directory 0700; with
  ``FLUXON_SHM_GROUP`` in the owner's environment they are 0660/0770 and belong to
  that group.
* Another OS user (``nobody``) can neither read ``shared.json`` nor open the pool, even
  when the directories above are opened up; a member of the configured group can.
* A client of cluster A cannot attach cluster B's pool (the ``shared.json`` and the
  pool header name the cluster) and does not see B's channels.
* The master's monitoring server listens on 127.0.0.1 unless configured otherwise.
"""

from __future__ import annotations

import grp
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap

import orjson
import pytest

from fluxon import naming
from fluxon.api_error import ChanCreateError, InvalidConfigurationError
from fluxon.api_ext_chan import ChanRole, ChanType, new_or_bind_with_unique_key
from fluxon.etcd_server import free_port
from fluxon.kvclient import new_store
from fluxon.runtime import start_kv_master_process
from fluxon.service.master import validate_master_config

pytestmark = pytest.mark.timeout(180)

_AS_OTHER_USER = textwrap.dedent(
    """
    import json, os, sys
    out = {"uid": os.getuid()}
    shared, pool, cfg = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    for name, path, flags in (("shared", shared, os.O_RDONLY), ("pool", pool, os.O_RDWR)):
        try:
            os.close(os.open(path, flags))
            out[name] = "opened"
        except OSError as exc:
            out[name] = type(exc).__name__
    if cfg:
        from fluxon.kvclient import new_store
        res = new_store(cfg)
        if res.is_ok():
            store = res.unwrap()
            store.put_blocking("from-" + str(os.getuid()), {"x": 1}).unwrap()
            store.close()
            out["new_store"] = "ok"
        else:
            err = res.unwrap_error()
            out["new_store"] = type(err).__name__ + ": " + err.message
    print(json.dumps(out))
    """
)


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _let_others_traverse() -> list[tuple[str, int]]:
    """Give other users search (x) permission on the folders above the checkout and the
    interpreter's packages (a clone in a 0700 ``mktemp -d`` folder hides them from the
    other user); returns ``(folder, old mode)`` pairs to restore."""
    import site
    import sysconfig

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    tops = {root, sys.prefix, sysconfig.get_paths()["purelib"], *site.getsitepackages()}
    changed: dict[str, int] = {}
    for top in tops:
        d = os.path.realpath(top)
        while True:
            mode = stat.S_IMODE(os.stat(d).st_mode)
            if not mode & stat.S_IXOTH and d not in changed:
                changed[d] = mode
                os.chmod(d, mode | stat.S_IXOTH)
            parent = os.path.dirname(d)
            if parent == d:
                break
            d = parent
    return list(changed.items())


def _as_user(cluster, tmp_path, *, gid: str, cfg: dict | None = None) -> dict:
    """Run the probe above as user ``nobody`` with primary group ``gid``, no others."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("running a client as another user needs root and setpriv")
    # The other user cannot write the project's Numba cache: give it its own.
    cache = tempfile.mkdtemp(prefix="fluxon-other-user-")
    opened = _let_others_traverse()
    try:
        os.chmod(cache, 0o777)
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, HOME=cache)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        done = subprocess.run(
            [setpriv, "--reuid", "nobody", "--regid", gid, "--clear-groups", sys.executable,
             "-c", _AS_OTHER_USER, cluster.shared_json, cluster.pool_file, json.dumps(cfg or {})],
            capture_output=True, text=True, timeout=150, env=env, cwd=cache,
        )  # fmt: skip
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        for d, mode in opened:
            os.chmod(d, mode)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _open_up(*dirs: str) -> None:
    for d in dirs:
        os.chmod(d, 0o755)


def test_files_are_private_and_another_user_cannot_attach(make_cluster, tmp_path):
    cluster = make_cluster(with_master=False)
    pool_dir = naming.pool_dir(cluster.share_mem_path, cluster.cluster_name)
    assert _mode(cluster.pool_file) == 0o600
    assert _mode(cluster.shared_json) == 0o600
    assert _mode(pool_dir) == 0o700
    cfg = cluster.client_config("intruder")
    seen = _as_user(cluster, tmp_path, gid="nogroup", cfg=cfg)
    assert seen["uid"] != 0
    assert seen["shared"] == "PermissionError" and seen["pool"] == "PermissionError"
    assert seen["new_store"].startswith("InternalError") and "ermission" in seen["new_store"]
    # Even with every directory above opened up, the files themselves stay closed.
    _open_up(cluster.base_dir, cluster.share_mem_path, pool_dir)
    seen = _as_user(cluster, tmp_path, gid="nogroup", cfg=cfg)
    assert seen["shared"] == "PermissionError" and seen["pool"] == "PermissionError"
    assert "ermission" in seen["new_store"]


def test_a_configured_group_may_attach(make_cluster, tmp_path):
    try:
        gid = grp.getgrnam("nogroup").gr_gid
    except KeyError:
        pytest.skip("no 'nogroup' group on this host")
    cluster = make_cluster(start=False, with_master=False)
    env = dict(os.environ, FLUXON_SHM_GROUP="nogroup")
    from fluxon.runtime import start_owner_kvclient_process

    cluster.owner_proc = start_owner_kvclient_process(
        config=cluster.owner_config, log_path=cluster.log_path("owner"), env=env
    )
    cluster._wait(cluster.owner_ready, cluster.owner_proc, "owner", 120)
    pool_dir = naming.pool_dir(cluster.share_mem_path, cluster.cluster_name)
    for path, mode in ((cluster.pool_file, 0o660), (cluster.shared_json, 0o660), (pool_dir, 0o770)):
        assert _mode(path) == mode, path
        assert os.stat(path).st_gid == gid, path
    os.chmod(cluster.base_dir, 0o711)
    os.chmod(cluster.share_mem_path, 0o711)
    member = _as_user(cluster, tmp_path, gid="nogroup", cfg=cluster.client_config("in-group"))
    assert member["shared"] == "opened" and member["pool"] == "opened"
    assert member["new_store"] == "ok", member
    outsider = _as_user(cluster, tmp_path, gid="12345", cfg=None)
    assert outsider["shared"] == "PermissionError" and outsider["pool"] == "PermissionError"
    # The group member's write is visible to the owner's user.
    store = new_store(cluster.client_config("root-client")).unwrap()
    try:
        assert store.get_blocking(f"from-{member['uid']}").unwrap().access() == {"x": 1}
    finally:
        store.close()


def test_a_client_of_one_cluster_cannot_attach_another(make_cluster, tmp_path, key):
    a = make_cluster(with_master=False)
    b = make_cluster(with_master=False)
    store_b = new_store(b.client_config("b-client")).unwrap()
    try:
        new_or_bind_with_unique_key(
            store_b, {"capacity": 4}, key, ChanType.MPMC, ChanRole.PRODUCER
        ).unwrap()
        # A's name, B's directory: shared.json says B.
        fake = tmp_path / "fake-share"
        fake.mkdir()
        os.symlink(naming.pool_dir(b.share_mem_path, b.cluster_name), fake / a.cluster_name)
        cfg = dict(a.client_config("a-client"))
        cfg["fluxonkv_spec"] = dict(cfg["fluxonkv_spec"], share_mem_path=str(fake))
        err = new_store(cfg).unwrap_error()
        assert isinstance(err, InvalidConfigurationError) and b.cluster_name in err.message
        # A shared.json forged for A in front of B's pool: the pool header says B.
        forged = tmp_path / "forged-share"
        (forged / a.cluster_name).mkdir(parents=True)
        with open(b.shared_json, "rb") as fh:
            shared = orjson.loads(fh.read())
        shared["cluster_name"] = a.cluster_name
        with open(forged / a.cluster_name / "shared.json", "wb") as fh:
            fh.write(orjson.dumps(shared))
        os.symlink(b.pool_file, forged / a.cluster_name / "mmap.file")
        cfg["fluxonkv_spec"] = dict(cfg["fluxonkv_spec"], share_mem_path=str(forged))
        err = new_store(cfg).unwrap_error()
        assert isinstance(err, InvalidConfigurationError), err
        assert b.cluster_name in err.message and "belongs to cluster" in err.message
        # A's own clients do not see B's channels.
        store_a = new_store(a.client_config("a-client")).unwrap()
        try:
            res = new_or_bind_with_unique_key(store_a, {}, key, ChanType.MPMC, ChanRole.CONSUMER)
            assert isinstance(res.unwrap_error(), ChanCreateError)
        finally:
            store_a.close()
    finally:
        store_b.close()


def _non_loopback_ip() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


def test_monitoring_listens_on_loopback_by_default(make_cluster, tmp_path):
    cfg = {
        "instance_key": "m",
        "cluster_name": "c",
        "port": 1,
        "etcd_endpoints": ["127.0.0.1:2379"],
        "log_dir": str(tmp_path),
    }
    default = validate_master_config(cfg)["master_ui"]["http_listen_addr"]
    host, _, port = default.rpartition(":")
    assert host == "127.0.0.1"
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", int(port))) == 0:
            pytest.skip(f"port {port} is in use here; the default address was checked")
    cluster = make_cluster(with_master=False)
    master_cfg = {
        "instance_key": f"master-{cluster.cluster_name}",
        "cluster_name": cluster.cluster_name,
        "port": free_port(),
        "etcd_endpoints": cluster.etcd_addresses,
        "log_dir": cluster.log_dir,
    }  # no master_ui: the defaults
    cluster.master_config = master_cfg
    cluster.master_proc = start_kv_master_process(
        config=master_cfg, log_path=cluster.log_path("master")
    )
    url = cluster.wait_master(cluster.master_proc)
    assert url.startswith("http://127.0.0.1:")
    ip = _non_loopback_ip()
    if ip is not None:
        with socket.socket() as other:
            other.settimeout(2.0)
            assert other.connect_ex((ip, int(port))) != 0, "reachable from outside"
