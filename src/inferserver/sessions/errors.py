"""What can go wrong with a request on a session; the api maps each kind to an HTTP status."""


class SessionError(Exception):
    """Base: the message is what the client reads."""


class NotFound(SessionError):
    """Unknown model, session, input or output."""


class WrongState(SessionError):
    """The session is not in a state that allows this request."""


class Conflict(SessionError):
    """Another request is already doing this (e.g. uploading the same input)."""


class InvalidInput(SessionError):
    """The request's content is not acceptable (bad configuration, wrong file type)."""


class TooLarge(SessionError):
    """An upload over the size limit."""


class InsufficientStorage(SessionError):
    """The session disk would fall below its free-space reserve."""


class AtCapacity(SessionError):
    """The server already holds as many live sessions as it may."""


class Stalled(SessionError):
    """A client stopped sending a request body (or sends it too slowly to be told from one that stopped)."""


class Gone(SessionError):
    """A resumable upload that expired: it existed, and will not come back."""


class ChecksumMismatch(SessionError):
    """A resumable upload's chunk whose Upload-Checksum does not match its bytes (tus: 460)."""
