"""Errors that tell the user what is wrong and how to fix it."""


class VAPError(Exception):
    """Base class: the message always names the problem and the fix."""


class VAPFormatError(VAPError):
    """A file or folder is not a readable VAP / Wan / CogVideoX checkpoint."""


class VAPModelMismatch(VAPError):
    """An expert does not fit the base model it is applied to."""


class VAPInputError(VAPError):
    """A reference / conditioning input is unusable."""
