"""Start the master and the owner as child processes (``python -m fluxon.service.*``).

A dict config without a ``workdir`` travels on the command line as ``--config-b64``
(base64 of its JSON); with a ``workdir`` it is written there (mode 0600) and passed as
``--config PATH``. ``config_path`` passes an existing file through unchanged.
"""

from __future__ import annotations

import argparse
import base64
import os
import subprocess
from collections.abc import Mapping
from typing import Any

import orjson

from .process_runner import popen_child, python_module_argv

MASTER_MODULE = "fluxon.service.master"
OWNER_MODULE = "fluxon.service.owner"


def encode_config_b64(config: Mapping[str, Any]) -> str:
    """Base64 of the JSON of ``config`` (for ``--config-b64``)."""
    return base64.b64encode(orjson.dumps(dict(config))).decode("ascii")


def decode_config_b64(text: str) -> dict:
    """Inverse of :func:`encode_config_b64`."""
    return orjson.loads(base64.b64decode(text.encode("ascii"), validate=True))


def load_config_file(path: str) -> dict:
    """Read a YAML or JSON config file into a dict."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        import yaml

        data = yaml.safe_load(raw)
        if not isinstance(data, dict):
            raise TypeError(f"config file {path} does not hold a mapping") from None
        return data


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the mutually exclusive ``--config-b64`` / ``--config`` options."""
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--config-b64", help="base64 of the config's JSON")
    group.add_argument("--config", help="path of a YAML or JSON config file")


def config_from_arguments(args: argparse.Namespace) -> dict:
    """The config dict named by ``--config-b64`` or ``--config``."""
    if args.config_b64:
        return decode_config_b64(args.config_b64)
    return load_config_file(args.config)


def _write_config(workdir: str, name: str, config: Mapping[str, Any]) -> str:
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, name)
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(orjson.dumps(dict(config), option=orjson.OPT_INDENT_2))
    os.replace(tmp, path)
    return path


def _start(
    module: str,
    file_name: str,
    *,
    workdir: str | None,
    config: Mapping[str, Any] | None,
    config_path: str | None,
    log_path: str | None,
    die_with_parent: bool,
    env: dict[str, str] | None,
) -> subprocess.Popen:
    if (config is None) == (config_path is None):
        raise ValueError("pass exactly one of config= or config_path=")
    if config_path is not None:
        args = ["--config", os.path.abspath(config_path)]
    elif workdir is not None:
        args = ["--config", _write_config(workdir, file_name, config)]
    else:
        args = ["--config-b64", encode_config_b64(config)]
    if workdir is not None:
        os.makedirs(workdir, exist_ok=True)
    return popen_child(
        python_module_argv(module, *args),
        cwd=workdir,
        log_path=log_path,
        env=env,
        die_with_parent=die_with_parent,
    )


def start_kv_master_process(
    *,
    workdir: str | None = None,
    config: Mapping[str, Any] | None = None,
    config_path: str | None = None,
    log_path: str | None = None,
    die_with_parent: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """Start the cluster master (``python -m fluxon.service.master``).

    Parameters
    ----------
    workdir : str, optional
        Working directory of the child; a dict ``config`` is written there as
        ``master_config.json``.
    config : mapping, optional
        Master config (``instance_key``, ``cluster_name``, ``port``, ``etcd_endpoints``,
        ``log_dir``, ``master_ui.http_listen_addr``...).
    config_path : str, optional
        Existing YAML/JSON config file (instead of ``config``).
    log_path : str, optional
        File capturing the child's stdout/stderr.
    die_with_parent : bool
        SIGTERM the master when the starting thread exits (default).
    env : dict, optional
        Child environment.

    Returns
    -------
    subprocess.Popen
    """
    return _start(
        MASTER_MODULE,
        "master_config.json",
        workdir=workdir,
        config=config,
        config_path=config_path,
        log_path=log_path,
        die_with_parent=die_with_parent,
        env=env,
    )


def start_owner_kvclient_process(
    *,
    workdir: str | None = None,
    config: Mapping[str, Any] | None = None,
    config_path: str | None = None,
    log_path: str | None = None,
    die_with_parent: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """Start the node's owner (``python -m fluxon.service.owner``).

    Parameters
    ----------
    workdir : str, optional
        Working directory of the child; a dict ``config`` is written there as
        ``owner_config.json``.
    config : mapping, optional
        Owner config: a :class:`fluxon.config.FluxonKvClientConfig` (or its dict) with
        ``contribute_to_cluster_pool_size.dram > 0``.
    config_path : str, optional
        Existing YAML/JSON config file (instead of ``config``).
    log_path : str, optional
        File capturing the child's stdout/stderr.
    die_with_parent : bool
        SIGTERM the owner when the starting thread exits (default).
    env : dict, optional
        Child environment.

    Returns
    -------
    subprocess.Popen
    """
    return _start(
        OWNER_MODULE,
        "owner_config.json",
        workdir=workdir,
        config=config,
        config_path=config_path,
        log_path=log_path,
        die_with_parent=die_with_parent,
        env=env,
    )
