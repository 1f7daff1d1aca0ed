"""The mount's statistics, as `mxfs stats` (the STATS_XATTR of its root) shows them: JSON."""

from __future__ import annotations

import json
from typing import Any

from fsproto.rpc import Op

from .rpc import RpcClient, RpcError, StaleEpoch
from .writeerrors import WriteErrors


async def stats_json(rpc: RpcClient, host: str, open_files: int, werr: WriteErrors,
                     inodes: int, cache: dict[str, Any] | None = None,
                     reader_handoffs: int = 0) -> str:
    """The client's counters and, asked now, the server's for this connection."""
    out: dict[str, Any] = {
        "server": f"{host}:{rpc.port}",
        "transport": rpc.transport,
        "client": rpc.statistics(),
        "open_files": open_files,
        "write_errors": werr.recorded,
        "lost_by_server_restart": werr.lost_by_restart,
        "inodes": inodes,
        "cache": cache or {},
        "fuse_reader_handoffs": reader_handoffs,  # fusereaders.py
    }
    try:
        out["server_side"] = await rpc.call(Op.STATS)
    except (RpcError, StaleEpoch) as e:
        out["server_side"] = {"error": str(e)}
    return json.dumps(out, sort_keys=True, default=str)
