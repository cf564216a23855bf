"""zmdist: turn vision-language foundation models into small, fast students at cluster scale."""

__version__ = "0.1.0"
