"""Why a volume is refused or cannot be converted; each message is for the client and names the file or limit."""


class ConversionError(Exception):
    """The file is not what it claims, or cannot be converted (HTTP 400)."""


class ConversionTooLarge(ConversionError):
    """The conversion would exceed MAX_CONVERT_BYTES, its memory or CONVERT_TIMEOUT (HTTP 413)."""


class ConversionNoSpace(ConversionError):
    """The disk (or the child's file-size limit) ran out while writing the result (HTTP 507)."""
