"""The import graph has the transport at the bottom, the shared protocol above it, and client
and server side by side on top: mxnet imports none of fsproto, mxfs, server, and only its trio
shell (endpoint, peer, sockio, handshake) imports trio; fsproto imports only mxnet, the
standard library, msgpack and xxhash; server imports no client module and the client no
server module. Read from the source (AST), every import statement anywhere in a
module, so a lazy import inside a function counts too."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = ("mxnet", "fsproto", "mxfs", "server")

# package -> the top-level packages it may import (beyond the standard library and itself)
ALLOWED: dict[str, set[str] | None] = {
    "mxnet": {"trio"},
    "fsproto": {"mxnet", "msgpack", "xxhash"},
}
# inside mxnet, only the trio shell may import trio: the engines (protocol, gm_engine),
# the wire formats and the handshake's decisions are sans-IO
TRIO_SHELL = {"mxnet/endpoint.py", "mxnet/peer.py", "mxnet/sockio.py", "mxnet/handshake.py"}
# package -> our packages it must not import (any other package is allowed)
FORBIDDEN = {
    "mxnet": {"fsproto", "mxfs", "server"},
    "fsproto": {"mxfs", "server"},
    "server": {"mxfs"},
    "mxfs": {"server"},
}


def imported(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every import in the module at *path* of *package*;
    relative imports are resolved against the module's place in the package."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = path.relative_to(ROOT).parent.parts  # the module's package: ("server",)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = here[:len(here) - node.level + 1] if node.level else ()
            top = base[0] if base else (node.module or node.names[0].name).split(".")[0]
            found.append((node.lineno, top))
    return found


def problems(package: str) -> list[str]:
    out = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, top in imported(path):
            where = f"{path.relative_to(ROOT)}:{line} imports {top}"
            if top in FORBIDDEN.get(package, ()):
                out.append(where)
            if (package == "mxnet" and top == "trio"
                    and path.relative_to(ROOT).as_posix() not in TRIO_SHELL):
                out.append(f"{where} (only the trio shell may: {', '.join(sorted(TRIO_SHELL))})")
            allowed = ALLOWED.get(package)
            if (allowed is not None and top != package and top not in allowed
                    and top not in sys.stdlib_module_names):
                out.append(f"{where} (only {', '.join(sorted(allowed))} and the standard "
                           "library may be)")
    return out


@pytest.mark.parametrize("package", OURS)
def test_imports_follow_the_layers(package: str) -> None:
    assert (ROOT / package / "__init__.py").exists()
    assert problems(package) == []


def probe(package: str, source: str) -> list[str]:
    """Where the check finds problems in *package* with a module of *source* added to it."""
    mod = ROOT / package / "_layering_probe.py"
    mod.write_text(source)
    try:
        found = problems(package)
    finally:
        mod.unlink()
    return [p.split(" ")[0] for p in found]


def test_the_check_sees_a_forbidden_import() -> None:
    """The walk finds a forbidden import at the top and one inside a function, and takes a
    relative import for one of the package's own."""
    found = probe("server", "import mxfs.rpc\nfrom . import ops\n\n\ndef f():\n"
                            "    from mxfs import fs\n")
    assert found == ["server/_layering_probe.py:1", "server/_layering_probe.py:6"]


def test_the_check_sees_trio_in_the_sans_io_engine() -> None:
    """A module of mxnet outside the trio shell that imports trio (even lazily) breaks the
    sans-IO rule; the shell's own modules may."""
    assert probe("mxnet", "def f():\n    import trio\n") == ["mxnet/_layering_probe.py:2"]
