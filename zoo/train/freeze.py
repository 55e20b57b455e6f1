"""Which parameters a fine-tuning run trains: one rule for both backends, on PyTorch's dotted names
(the Flax twins' attribute paths are the same names)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Freeze:
    """`mode`: "none", "backbone" (everything but the classifier head) or "prefixes" (those listed).
    Frozen parameters get no update and no optimizer state; BatchNorm layers inside a frozen part keep
    their running statistics (they run in eval mode while the rest trains)."""

    classifier: str = ""
    mode: str = "none"
    prefixes: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, freeze: str | list[str] | None, classifier: str) -> Freeze:
        if freeze in (None, "none"):
            return cls(classifier)
        if freeze == "backbone":
            if not classifier:
                raise ValueError("freeze='backbone' needs the model's classifier prefix (the registry's `classifier`)")
            return cls(classifier, "backbone")
        if isinstance(freeze, str) or not all(isinstance(p, str) and p for p in freeze):
            raise ValueError(f"freeze must be 'none', 'backbone' or a list of parameter-name prefixes, got {freeze!r}")
        return cls(classifier, "prefixes", tuple(p.rstrip(".") for p in freeze))

    def is_head(self, name: str) -> bool:
        return bool(self.classifier) and (name == self.classifier or name.startswith(self.classifier + "."))

    def is_frozen(self, name: str) -> bool:
        """`name`: a parameter (`blocks.0.conv1.weight`) or module (`blocks.0.bn1`) path."""
        if self.mode == "backbone":
            return not self.is_head(name)
        return any(name == p or name.startswith(p + ".") for p in self.prefixes)
