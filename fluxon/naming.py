"""The one place that derives file paths in the pool directory and etcd keys.

Only the owner creates and unlinks what :func:`pool_file` and :func:`shared_json`
name; clients attach and detach.
"""

from __future__ import annotations

import os

POOL_FILE_NAME = "mmap.file"
SHARED_JSON_NAME = "shared.json"
ETCD_ROOT = "/fluxon"


def pool_dir(share_mem_path: str, cluster_name: str) -> str:
    """Directory of a cluster's pool on this node: ``{share_mem_path}/{cluster_name}``."""
    return os.path.join(share_mem_path, cluster_name)


def pool_file(share_mem_path: str, cluster_name: str) -> str:
    """The shared-memory pool file created by the owner."""
    return os.path.join(pool_dir(share_mem_path, cluster_name), POOL_FILE_NAME)


def shared_json(share_mem_path: str, cluster_name: str) -> str:
    """``shared.json``: what an external client needs to attach (written by the owner)."""
    return os.path.join(pool_dir(share_mem_path, cluster_name), SHARED_JSON_NAME)


def cluster_prefix(cluster_name: str) -> str:
    """etcd prefix of everything a cluster stores."""
    return f"{ETCD_ROOT}/{cluster_name}/"


def member_key(cluster_name: str, instance_key: str) -> str:
    """etcd key of a cluster member (owner or external client), leased by the member."""
    return f"{ETCD_ROOT}/{cluster_name}/members/{instance_key}"


def members_prefix(cluster_name: str) -> str:
    """etcd prefix under which every member key of a cluster lives."""
    return f"{ETCD_ROOT}/{cluster_name}/members/"


def owner_key(cluster_name: str, owner_id: str) -> str:
    """etcd key describing an owner and its pool, leased by the owner."""
    return f"{ETCD_ROOT}/{cluster_name}/owners/{owner_id}"


def owners_prefix(cluster_name: str) -> str:
    """etcd prefix under which every owner key of a cluster lives."""
    return f"{ETCD_ROOT}/{cluster_name}/owners/"


def master_key(cluster_name: str) -> str:
    """etcd key of the cluster's master (leased; holds its HTTP address)."""
    return f"{ETCD_ROOT}/{cluster_name}/master"


def id_counter_key(cluster_name: str, counter: str) -> str:
    """etcd key of a monotonic id counter (advanced by transactions)."""
    return f"{ETCD_ROOT}/{cluster_name}/ids/{counter}"


# ---------------------------------------------------------------------------- channels
# Layout under ``{ETCD_ROOT}/{cluster}/mq/``:
#   unique_keys/{unique_id}          -> chan_id                 (channel lease)
#   channels/{chan_id}               -> descriptor JSON         (channel lease)
#   members/{chan_id}/{member_id}    -> member JSON             (the member's lease)
# One unique-key namespace serves MPMC and MPSC channels alike.


def chan_unique_key(cluster_name: str, unique_id: str) -> str:
    """etcd key mapping a channel's unique key to its ``chan_id`` (leased with the channel)."""
    return f"{ETCD_ROOT}/{cluster_name}/mq/unique_keys/{unique_id}"


def chan_unique_prefix(cluster_name: str) -> str:
    """etcd prefix of every unique-key mapping of a cluster."""
    return f"{ETCD_ROOT}/{cluster_name}/mq/unique_keys/"


def chan_desc_key(cluster_name: str, chan_id: int | str) -> str:
    """etcd key of a channel descriptor (JSON; leased with the channel)."""
    return f"{ETCD_ROOT}/{cluster_name}/mq/channels/{chan_id}"


def chan_desc_prefix(cluster_name: str) -> str:
    """etcd prefix of every channel descriptor of a cluster."""
    return f"{ETCD_ROOT}/{cluster_name}/mq/channels/"


def chan_member_key(cluster_name: str, chan_id: int | str, member_id: int | str) -> str:
    """etcd key of one producer/consumer of a channel (JSON; leased by that member)."""
    return f"{ETCD_ROOT}/{cluster_name}/mq/members/{chan_id}/{member_id}"


def chan_members_prefix(cluster_name: str, chan_id: int | str | None = None) -> str:
    """etcd prefix of the member records of one channel (or of every channel)."""
    if chan_id is None:
        return f"{ETCD_ROOT}/{cluster_name}/mq/members/"
    return f"{ETCD_ROOT}/{cluster_name}/mq/members/{chan_id}/"


#: Names of the id counters (see :func:`id_counter_key`) used by channels.
CHAN_ID_COUNTER = "chan"
CHAN_MEMBER_ID_COUNTER = "chan_member"
