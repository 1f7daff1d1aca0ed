"""Errors both commands raise or unwrap the same way: a bad setting, trio's exception groups."""

from __future__ import annotations


class OptionError(ValueError):
    """A setting given by the user is wrong (an address, a secret file, a mount option):
    the message says which and why, in one line."""


def leaf_exception(e: BaseException) -> BaseException:
    """The one exception inside (nested) single-member exception groups from trio nurseries."""
    while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
        e = e.exceptions[0]
    return e
