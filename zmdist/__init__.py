"""zmdist: turn vision-language foundation models into small, fast students at cluster scale."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``zmdist.load_student`` imported on first use, so ``import zmdist`` (and ``zmdist --help``) stay light."""
    if name == "load_student":
        from zmdist.models.export import load_student

        return load_student
    raise AttributeError(f"module 'zmdist' has no attribute {name!r}")


__all__ = ["__version__", "load_student"]
