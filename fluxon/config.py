"""Client configuration: ``FluxonKvClientConfig``.

The config is a plain dict (so it can be dumped to JSON and handed to a subprocess),
validated when it is built. Everything wrong raises :class:`InvalidConfigurationError`
whose ``config_key`` is the dotted path of the offending key::

    cfg = FluxonKvClientConfig({
        "instance_key": "producer-1",
        "fluxonkv_spec": {"cluster_name": "demo", "share_mem_path": "/dev/shm/fluxon"},
    })

Keys (those of the reference package; ``mooncake_spec`` is not supported)::

    instance_key: str                      # required, unique in the cluster
    network: {rdma_device_names: [str], tcp_reactor_mode: str|bool}   # accepted, unused
    pprof_duration_seconds: int > 0        # accepted, unused
    contribute_to_cluster_pool_size:       # absent, or dram 0 and all vram 0 -> external
      dram: size                           # int bytes or "512MB", "1GB", "1.5GiB" (MB = MiB)
      vram: {gpu_id: size}                 # must be 0: fluxon pools live in host memory
    test_spec_config: {...}                # accepted, unused
    fluxonkv_spec:
      cluster_name: str                    # required, [A-Za-z0-9._-]+
      share_mem_path: str                  # required, absolute; pool at {path}/{cluster_name}/
      etcd_addresses: ["host:port"] | "h1:p1,h2:p2"   # owner only (required there)
      sub_cluster: str                     # owner only, default "default"
      large_file_paths: [str] | {root_paths: [str]}   # owner only, accepted, unused
      large_limit_size: size               # owner only, accepted, unused
      redis_compat: {listen_addr: str}     # owner only, accepted, unused
      p2p_listen_port: int                 # accepted, unused

An external client (zero contribution) must not set ``etcd_addresses``, ``sub_cluster``,
``large_file_paths``, ``large_limit_size`` or ``redis_compat``: it inherits them from
the owner's ``shared.json``.

Normalisation: sizes become ints (bytes), ``etcd_addresses`` becomes a list, an owner's
missing ``sub_cluster`` becomes ``"default"``, tuples become lists and enum values their
``.value``. Building a config from an already validated one gives the same dict.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from enum import Enum
from typing import Any

import orjson

from fluxon_kernels.layout.pool_header import CLUSTER_NAME_MAX, OWNER_ID_MAX
from fluxon_kernels.layout.sizing import MIN_POOL_BYTES

from .api_error import InvalidConfigurationError

__all__ = ["FluxonKvClientConfig", "parse_etcd_addresses", "parse_size"]

DEFAULT_CONFIG_PATH = "./config.yaml"
DEFAULT_SUB_CLUSTER = "default"

_TOP_KEYS = (
    "instance_key",
    "network",
    "pprof_duration_seconds",
    "contribute_to_cluster_pool_size",
    "test_spec_config",
    "fluxonkv_spec",
    "mooncake_spec",
)
_NETWORK_KEYS = ("rdma_device_names", "tcp_reactor_mode")
_CONTRIB_KEYS = ("dram", "vram")
_SPEC_KEYS = (
    "etcd_addresses",
    "cluster_name",
    "share_mem_path",
    "large_file_paths",
    "large_limit_size",
    "p2p_listen_port",
    "redis_compat",
    "sub_cluster",
)
#: Keys an external client inherits from the owner's shared.json and must not set.
_OWNER_ONLY_SPEC_KEYS = (
    "etcd_addresses",
    "sub_cluster",
    "large_file_paths",
    "large_limit_size",
    "redis_compat",
)

_CLUSTER_NAME_RE = re.compile(r"[A-Za-z0-9._-]+")
_SIZE_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]*)\s*")
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kb": 1 << 10,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mb": 1 << 20,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gb": 1 << 30,
    "gib": 1 << 30,
    "t": 1 << 40,
    "tb": 1 << 40,
    "tib": 1 << 40,
}


def _fail(message: str, key: str, value: Any = None) -> InvalidConfigurationError:
    shown = value if value is None or isinstance(value, (str, int, float, bool)) else repr(value)
    return InvalidConfigurationError(message, config_key=key, config_value=shown)


def _type_name(value: Any) -> str:
    return type(value).__name__


def parse_size(value: Any, key: str) -> int:
    """A byte size from an int or a string such as ``"512MB"``, ``"1GB"``, ``"1.5GiB"``.

    Units are binary whatever their spelling (``MB`` = ``MiB`` = 2**20, as in the
    reference); fractional results are rounded down to whole bytes.

    Parameters
    ----------
    value : int | float | str
        The size. A float must be a whole number.
    key : str
        Dotted config key, used in the error.

    Returns
    -------
    int
        Bytes, >= 0.

    Raises
    ------
    InvalidConfigurationError
        For negative, non-integral, unparsable or wrongly typed values.
    """
    if isinstance(value, bool):
        raise _fail(
            f"{key} must be a size (int bytes or a string like '512MB'), got a bool", key, value
        )
    if isinstance(value, int):
        if value < 0:
            raise _fail(f"{key} must not be negative, got {value}", key, value)
        return int(value)
    if isinstance(value, float):
        if not value.is_integer() or value < 0:
            raise _fail(
                f"{key} must be a whole, non-negative number of bytes, got {value}", key, value
            )
        return int(value)
    if isinstance(value, str):
        match = _SIZE_RE.fullmatch(value)
        unit = _SIZE_UNITS.get(match.group(2).lower()) if match else None
        if match is None or unit is None:
            raise _fail(
                f"{key}: cannot read {value!r} as a size; use bytes or a number with a unit "
                "B, KB, MB, GB, TB (binary: MB = MiB)",
                key,
                value,
            )
        try:
            number = Decimal(match.group(1))
        except InvalidOperation:  # pragma: no cover - the regex admits only decimals
            raise _fail(f"{key}: cannot read {value!r} as a size", key, value) from None
        return int(number * unit)
    raise _fail(
        f"{key} must be a size (int bytes or a string like '512MB'), got {_type_name(value)}",
        key,
        value,
    )


def parse_etcd_addresses(value: Any, key: str = "fluxonkv_spec.etcd_addresses") -> list[str]:
    """``["host:port", ...]`` from a list of strings or one comma-separated string.

    Raises
    ------
    InvalidConfigurationError
        For an empty list, a non-string entry or an entry that is not ``host:port``.
    """
    if isinstance(value, str):
        items = [part.strip() for part in value.split(",") if part.strip()]
    elif isinstance(value, list):
        items = value
    else:
        raise _fail(
            f"{key} must be a list of 'host:port' strings or one comma-separated string, "
            f"got {_type_name(value)}",
            key,
            value,
        )
    if not items:
        raise _fail(f"{key} must name at least one etcd address", key, value)
    out = []
    for idx, item in enumerate(items):
        where = f"{key}[{idx}]"
        if not isinstance(item, str):
            raise _fail(
                f"{where} must be a 'host:port' string, got {_type_name(item)}", where, item
            )
        item = item.strip()
        host, sep, port = item.rpartition(":")
        if "://" in item or not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise _fail(
                f"{where} must look like 'host:port' (e.g. '127.0.0.1:2379'), got {item!r}",
                where,
                item,
            )
        out.append(item)
    return out


def _plain(value: Any, key: str) -> Any:
    """Plain JSON-like copy: mappings -> dict, tuples -> list, enums -> their value."""
    if isinstance(value, Enum):
        value = value.value
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if isinstance(k, Enum):
                k = k.value
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise _fail(f"{key}: keys must be strings, got {_type_name(k)} {k!r}", key, k)
            out[str(k)] = _plain(v, f"{key}.{k}" if key else str(k))
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{key}[{i}]") for i, v in enumerate(value)]
    raise _fail(f"{key} has an unsupported type {_type_name(value)}", key, value)


def _check_keys(section: dict, allowed: tuple[str, ...], prefix: str) -> None:
    for name, value in section.items():
        if name not in allowed:
            full = f"{prefix}{name}"
            raise _fail(
                f"unknown config key {full!r} (allowed here: {', '.join(allowed)})", full, value
            )


def _section(cfg: dict, name: str, prefix: str = "") -> dict | None:
    value = cfg.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _fail(
            f"{prefix}{name} must be a mapping, got {_type_name(value)}", f"{prefix}{name}", value
        )
    return value


def _nonempty_str(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(f"{key} must be a non-empty string, got {value!r}", key, value)
    return value


def _validate(cfg: dict) -> None:
    """Check and normalise ``cfg`` in place."""
    _check_keys(cfg, _TOP_KEYS, "")

    if "mooncake_spec" in cfg:
        raise _fail(
            "mooncake_spec is not supported by fluxon; use fluxonkv_spec",
            "mooncake_spec",
            cfg["mooncake_spec"],
        )

    # instance_key: also an etcd key segment and the member name in the pool.
    if "instance_key" not in cfg:
        raise _fail("instance_key is required", "instance_key")
    instance_key = _nonempty_str(cfg["instance_key"], "instance_key")
    if (
        instance_key != instance_key.strip()
        or "/" in instance_key
        or not instance_key.isprintable()
    ):
        raise _fail(
            f"instance_key {instance_key!r} must not contain '/', control characters or "
            "leading/trailing spaces",
            "instance_key",
            instance_key,
        )
    if len(instance_key.encode("utf-8")) > OWNER_ID_MAX:
        raise _fail(
            f"instance_key is longer than {OWNER_ID_MAX} bytes", "instance_key", instance_key
        )

    network = _section(cfg, "network")
    if network is not None:
        _check_keys(network, _NETWORK_KEYS, "network.")
        names = network.get("rdma_device_names")
        if names is not None and (
            not isinstance(names, list) or not all(isinstance(n, str) for n in names)
        ):
            raise _fail(
                "network.rdma_device_names must be a list of strings",
                "network.rdma_device_names",
                names,
            )
        mode = network.get("tcp_reactor_mode")
        if mode is not None and not isinstance(mode, (str, bool)):
            raise _fail(
                "network.tcp_reactor_mode must be a string or bool",
                "network.tcp_reactor_mode",
                mode,
            )

    pprof = cfg.get("pprof_duration_seconds")
    if pprof is not None and (isinstance(pprof, bool) or not isinstance(pprof, int) or pprof <= 0):
        raise _fail(
            f"pprof_duration_seconds must be a positive int, got {pprof!r}",
            "pprof_duration_seconds",
            pprof,
        )

    _section(cfg, "test_spec_config")

    # Contribution: decides owner vs external.
    dram = 0
    contrib = _section(cfg, "contribute_to_cluster_pool_size")
    if contrib is not None:
        p = "contribute_to_cluster_pool_size."
        _check_keys(contrib, _CONTRIB_KEYS, p)
        if "dram" not in contrib:
            raise _fail(
                f"{p}dram is required when {p[:-1]} is given (0 = external client)", p + "dram"
            )
        dram = contrib["dram"] = parse_size(contrib["dram"], p + "dram")
        vram = contrib.get("vram")
        if vram is not None:
            if not isinstance(vram, dict):
                raise _fail(
                    f"{p}vram must be a mapping {{gpu_id: size}}, got {_type_name(vram)}",
                    p + "vram",
                    vram,
                )
            for gpu, size in list(vram.items()):
                vram[gpu] = parse_size(size, f"{p}vram.{gpu}")
                if vram[gpu] != 0:
                    raise _fail(
                        f"{p}vram.{gpu} = {vram[gpu]}: VRAM contribution is not supported by "
                        "fluxon (pools live in host memory); use 0 or leave vram empty",
                        f"{p}vram.{gpu}",
                        vram[gpu],
                    )
        if 0 < dram < MIN_POOL_BYTES:
            raise _fail(
                f"{p}dram = {dram} bytes is below the smallest pool ({MIN_POOL_BYTES} bytes = "
                f"{MIN_POOL_BYTES >> 20}MB)",
                p + "dram",
                dram,
            )
    is_external = dram == 0

    # fluxonkv_spec
    if cfg.get("fluxonkv_spec") is None:
        raise _fail("fluxonkv_spec is required", "fluxonkv_spec")
    spec = _section(cfg, "fluxonkv_spec")
    assert spec is not None
    p = "fluxonkv_spec."
    _check_keys(spec, _SPEC_KEYS, p)

    if "cluster_name" not in spec:
        raise _fail(f"{p}cluster_name is required", p + "cluster_name")
    name = _nonempty_str(spec["cluster_name"], p + "cluster_name")
    if not _CLUSTER_NAME_RE.fullmatch(name) or name in (".", ".."):
        raise _fail(
            f"{p}cluster_name {name!r} may only use letters, digits, '.', '_' and '-'",
            p + "cluster_name",
            name,
        )
    if len(name) > CLUSTER_NAME_MAX:
        raise _fail(
            f"{p}cluster_name is longer than {CLUSTER_NAME_MAX} bytes", p + "cluster_name", name
        )

    if "share_mem_path" not in spec:
        raise _fail(f"{p}share_mem_path is required", p + "share_mem_path")
    path = _nonempty_str(spec["share_mem_path"], p + "share_mem_path")
    if not os.path.isabs(path) or "\x00" in path:
        raise _fail(
            f"{p}share_mem_path must be an absolute path, got {path!r}", p + "share_mem_path", path
        )

    port = spec.get("p2p_listen_port")
    if port is not None and (
        isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < 65536
    ):
        raise _fail(
            f"{p}p2p_listen_port must be a port number 0..65535, got {port!r}",
            p + "p2p_listen_port",
            port,
        )

    if is_external:
        for key in _OWNER_ONLY_SPEC_KEYS:
            if key in spec:
                raise _fail(
                    f"{p}{key} must not be set for an external client (zero contribution): it is "
                    "inherited from the owner's shared.json",
                    p + key,
                    spec[key],
                )
        return

    # Owner mode.
    if spec.get("etcd_addresses") is None:
        raise _fail(f"{p}etcd_addresses is required for an owner (dram > 0)", p + "etcd_addresses")
    spec["etcd_addresses"] = parse_etcd_addresses(spec["etcd_addresses"], p + "etcd_addresses")

    sub = spec.get("sub_cluster")
    if sub is None:
        spec["sub_cluster"] = DEFAULT_SUB_CLUSTER
    elif not isinstance(sub, str) or not sub.strip() or sub != sub.strip():
        raise _fail(
            f"{p}sub_cluster must be a non-empty string without surrounding spaces, got {sub!r}",
            p + "sub_cluster",
            sub,
        )

    lfp = spec.get("large_file_paths")
    if lfp is not None:
        roots = lfp.get("root_paths") if isinstance(lfp, dict) else lfp
        if isinstance(lfp, dict):
            _check_keys(lfp, ("root_paths",), p + "large_file_paths.")
        if not isinstance(roots, list) or not all(isinstance(r, str) and r.strip() for r in roots):
            raise _fail(
                f"{p}large_file_paths must be a list of paths (or {{root_paths: [...]}})",
                p + "large_file_paths",
                lfp,
            )

    if spec.get("large_limit_size") is not None:
        spec["large_limit_size"] = parse_size(spec["large_limit_size"], p + "large_limit_size")

    redis = spec.get("redis_compat")
    if redis is not None:
        if not isinstance(redis, dict):
            raise _fail(f"{p}redis_compat must be a mapping", p + "redis_compat", redis)
        _check_keys(redis, ("listen_addr",), p + "redis_compat.")
        if not isinstance(redis.get("listen_addr"), str):
            raise _fail(
                f"{p}redis_compat.listen_addr must be a string", p + "redis_compat.listen_addr"
            )


class FluxonKvClientConfig(dict):
    """A validated client config; still a plain ``dict`` (JSON-serialisable, picklable).

    Parameters
    ----------
    config_dict : Mapping
        The configuration (see the module docstring for the keys).

    Raises
    ------
    InvalidConfigurationError
        Naming the offending key in ``config_key``.
    """

    def __init__(self, config_dict: Mapping[str, Any]) -> None:
        if not isinstance(config_dict, Mapping):
            raise _fail(f"a config must be a mapping, got {_type_name(config_dict)}", "", None)
        plain = _plain(config_dict, "")
        _validate(plain)
        super().__init__(plain)

    @classmethod
    def from_file(cls, path: str = DEFAULT_CONFIG_PATH) -> FluxonKvClientConfig:
        """Read a YAML (``.yaml``/``.yml``/other) or JSON (``.json``) config file.

        Raises
        ------
        InvalidConfigurationError
            When the file is missing or unreadable, does not parse, or is not a valid
            config (``config_key`` names the key; the message names the file).
        """
        path = os.fspath(path)
        try:
            with open(path, "rb") as fh:
                raw = fh.read()
        except OSError as exc:
            raise InvalidConfigurationError(
                f"cannot read config file {path!r} ({os.path.abspath(path)}): "
                f"{exc.strerror or exc}",
                config_key="path",
                config_value=path,
            ) from None
        if path.endswith(".json"):
            try:
                data = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise InvalidConfigurationError(
                    f"config file {path!r} is not valid JSON: {exc}",
                    config_key="path",
                    config_value=path,
                ) from None
        else:
            try:
                import yaml
            except ImportError:  # pragma: no cover - PyYAML is a dependency
                raise InvalidConfigurationError(
                    f"reading {path!r} needs PyYAML (pip install pyyaml), or use a .json file",
                    config_key="path",
                    config_value=path,
                ) from None
            try:
                data = yaml.safe_load(raw)
            except yaml.YAMLError as exc:
                raise InvalidConfigurationError(
                    f"config file {path!r} is not valid YAML: {exc}",
                    config_key="path",
                    config_value=path,
                ) from None
        if not isinstance(data, dict):
            raise InvalidConfigurationError(
                f"config file {path!r} must hold a mapping at the top level, got "
                f"{'nothing' if data is None else _type_name(data)}",
                config_key="path",
                config_value=path,
            )
        try:
            return cls(data)
        except InvalidConfigurationError as exc:
            exc.message = f"{path}: {exc.message}"
            exc.args = (exc.message,)
            raise

    # ----------------------------------------------------------- accessors
    @property
    def config_dict(self) -> dict:
        """The config itself (reference spelling)."""
        return self

    def to_dict(self) -> dict:
        """A deep plain-dict copy."""
        return orjson.loads(orjson.dumps(dict(self)))

    @property
    def instance_key(self) -> str:
        """This process's unique member id in the cluster."""
        return self["instance_key"]

    @property
    def cluster_name(self) -> str:
        """``fluxonkv_spec.cluster_name``."""
        return self["fluxonkv_spec"]["cluster_name"]

    @property
    def share_mem_path(self) -> str:
        """``fluxonkv_spec.share_mem_path``: the pool's folder is ``{it}/{cluster_name}``."""
        return self["fluxonkv_spec"]["share_mem_path"]

    @property
    def dram_bytes(self) -> int:
        """Contributed DRAM in bytes (0 for an external client)."""
        contrib = self.get("contribute_to_cluster_pool_size") or {}
        return int(contrib.get("dram", 0))

    @property
    def is_external(self) -> bool:
        """True for a zero-contribution client (it attaches to the local owner's pool)."""
        return self.dram_bytes == 0

    @property
    def etcd_addresses(self) -> list[str]:
        """``["host:port", ...]`` of an owner; ``[]`` for an external client (see shared.json)."""
        return list(self["fluxonkv_spec"].get("etcd_addresses") or [])

    @property
    def sub_cluster(self) -> str | None:
        """An owner's sub-cluster label; None for an external client (see shared.json)."""
        return self["fluxonkv_spec"].get("sub_cluster")

    @property
    def pprof_duration_seconds(self) -> int | None:
        """Accepted for compatibility; unused."""
        return self.get("pprof_duration_seconds")

    @property
    def contribute_to_cluster_pool_size(self) -> dict | None:
        """The contribution block as given (sizes normalised to ints), or None."""
        return self.get("contribute_to_cluster_pool_size")

    # Reference spellings.
    @property
    def fluxonkv_spec_cluster_name(self) -> str:
        """Same as :attr:`cluster_name`."""
        return self.cluster_name

    @property
    def fluxonkv_spec_share_mem_path(self) -> str:
        """Same as :attr:`share_mem_path`."""
        return self.share_mem_path

    @property
    def fluxonkv_spec_etcd_addresses(self) -> list[str] | None:
        """``fluxonkv_spec.etcd_addresses`` as stored (None when unset)."""
        return self["fluxonkv_spec"].get("etcd_addresses")

    @property
    def fluxonkv_spec_sub_cluster(self) -> str | None:
        """Same as :attr:`sub_cluster`."""
        return self.sub_cluster

    def __repr__(self) -> str:
        return f"FluxonKvClientConfig({dict.__repr__(self)})"
