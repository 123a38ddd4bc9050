"""Exceptions a sweep records as a point's status instead of crashing."""


class Unsupported(Exception):
    """An implementation cannot run this point (dtype, layout, shape or device); recorded as 'unsupported'."""


class Unavailable(Exception):
    """A backend or meter is missing on this machine (no CuPy, no NVML, ...); the message says why."""
