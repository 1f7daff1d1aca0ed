"""Exceptions raised by mxnet."""


class MxError(Exception):
    """Base class of every mxnet error."""


class ConnectError(MxError):
    """The connection could not be set up: unreachable, wrong key, wrong wire version or transport."""


class MatchError(MxError, ValueError):
    """A receive's match/mask pair can never match (``match & ~mask != 0``) or is out of range."""


class RegistrationError(MxError):
    """GM transport: memory used for communication was not registered (or is no longer)."""


class ProtocolError(MxError):
    """A peer sent something the protocol does not allow. Ends that peer's connection only."""


class Timeout(MxError, TimeoutError):
    """A wait did not complete in time. The request stays pending."""


class PeerGone(MxError):
    """The connection ended (EOF or reset) while more bytes were needed."""


class QueueFull(MxError):
    """isend: the send queue to that peer already holds ``send_buffer_max`` messages (not yet
    on the wire). Nothing was sent; ``await ep.send(...)`` waits for room instead."""
