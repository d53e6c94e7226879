"""One helper that turns an impossible option into an error naming it and what is allowed."""


def require(ok: bool, option: str, value: object, allowed: str) -> None:
    """Raise ``ValueError("<option>=<value> is invalid: expected <allowed>.")`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{option}={value!r} is invalid: expected {allowed}.")
