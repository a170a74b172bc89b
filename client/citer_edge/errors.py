"""Errors the edge library raises to its callers; each message is one readable line for the CLI."""


class CiterEdgeError(Exception):
    """Base class: the CLI prints ``str(error)`` as one line and exits non-zero."""


class ModelNotFoundError(CiterEdgeError):
    """A model path does not exist, or an alias is not cached and cannot be pulled."""


class ModelDownloadError(CiterEdgeError):
    """Pulling a model from the package registry failed or its checksum did not match."""


class TokenizerMismatchError(CiterEdgeError):
    """The SLM and the LLM do not share a vocabulary, so token ids would mean different things."""


class RouterMismatchError(CiterEdgeError):
    """A router expects features of a different size than the SLM provides."""


class CloudAuthError(CiterEdgeError):
    """The cloud service refused the client's bearer token."""
