"""fsproto's settings both commands share: the transports' ports, the secret file."""

from __future__ import annotations

import errno

import pytest

from fsproto.address import PORT_MAX, gm_port, highest_port, listen_port, parse_address
from fsproto.errors import OptionError, leaf_exception
from fsproto.secret import read_secret


def test_gm_listens_one_above_mx_only_when_serving_both() -> None:
    assert gm_port(7070) == 7071
    assert [listen_port(7070, t, both=True) for t in ("mx", "gm")] == [7070, 7071]
    assert listen_port(7070, "gm", both=False) == 7070
    assert listen_port(0, "gm", both=True) == 0  # any free port
    assert highest_port(both=True) == PORT_MAX - 1 and highest_port(both=False) == PORT_MAX


def test_parse_address_port_zero_only_when_allowed() -> None:
    assert parse_address("h:0", allow_zero=True) == ("h", 0)
    with pytest.raises(OptionError):
        parse_address("h:0")


def test_read_secret(tmp_path) -> None:
    (tmp_path / "s").write_bytes(b"  key\n")
    assert read_secret(str(tmp_path / "s")) == b"key"
    (tmp_path / "e").write_bytes(b"\n")
    with pytest.raises(OptionError, match="empty"):
        read_secret(str(tmp_path / "e"))
    with pytest.raises(OSError) as e:
        read_secret(str(tmp_path / "missing"))
    assert e.value.errno == errno.ENOENT


def test_leaf_exception_unwraps_single_member_groups() -> None:
    inner = ValueError("x")
    assert leaf_exception(ExceptionGroup("a", [ExceptionGroup("b", [inner])])) is inner
    two = ExceptionGroup("a", [inner, KeyError()])
    assert leaf_exception(two) is two
