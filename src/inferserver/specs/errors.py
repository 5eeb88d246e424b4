"""Errors raised while loading model specs and validating run configurations."""

from __future__ import annotations


class SpecError(ValueError):
    """A model spec that cannot be loaded; the message names the field and the reason."""


class ConfigError(ValueError):
    """A run configuration (the body of ``POST /models/{id}``) that the model cannot accept.

    ``field`` is a path such as ``"params/count"`` or ``"inputs/mask"`` so the API layer can
    point the user at the offending entry; ``reason`` says what is wrong with it.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
