"""The exceptions layerbench raises on purpose: a sweep file's error, and what a point records as its status."""


class Unsupported(Exception):
    """An implementation cannot run this point (dtype, layout, shape or device); recorded as 'unsupported'."""


class Unavailable(Exception):
    """A backend or meter is missing on this machine (no CuPy, no NVML, ...); the message says why."""


class SweepError(ValueError):
    """A sweep file is malformed; the message names the file, the key and what is allowed."""
