"""Training and evaluation commands (`zoo train`, `zoo eval`); filled in by the training library."""


def add_commands(sub) -> None:
    return None
