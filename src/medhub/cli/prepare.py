"""What ``medhub pull`` and ``medhub run --pull`` share: make a model ready, showing what it costs.

A model is ready when its weights are here and verified and, if it runs in its own environment,
that environment is built. Building one takes minutes and hundreds of MB, so it happens only
here, when the user asked (issue 13): ``medhub run`` without ``--pull`` refuses a model whose
environment is not built and says to pull it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from medhub.cli.app import console


def human_size(size: int) -> str:
    """Bytes as people read them: 812 KB, 135.4 MB, 1.2 GB."""
    if size >= 1e9:
        return f"{size / 1e9:.1f} GB"
    if size >= 1e6:
        return f"{size / 1e6:.1f} MB"
    if size >= 1e3:
        return f"{size / 1e3:.0f} KB"
    return f"{max(size, 0)} bytes"


def prepare(entry: Any, *, offline: bool = False, show: bool = True) -> dict[str, Any]:
    """Fetch and verify the model's weights, build its environment if it needs one; what was done, as JSON.

    ``show`` draws a progress bar for downloads, a spinner with uv's progress while the
    environment is built, and one line per weights file and for the environment with its size.
    """
    from medhub.hub import envs
    from medhub.hub.catalog import pull_weights

    card = entry.card
    state = envs.env_state(card)
    if state.problem:  # e.g. torch here does not satisfy the card: nothing to download would fix it
        from medhub.errors import MedhubError

        raise MedhubError(state.problem)
    paths = pull_weights(entry, progress=show, offline=offline)
    weights = []
    for spec in card.weights:
        path = paths.get(spec.name)
        size = path.stat().st_size if path is not None and path.exists() else 0
        verified = spec.sha256 is not None
        weights.append({"name": spec.name, "path": str(path) if path else None, "bytes": size,
                        "verified": verified, "source": "bundled" if spec.bundled_in else "downloaded"})
        if show:
            check = "SHA-256 verified" if verified else "no SHA-256 in the card: unverified"
            _say(f"{card.id}: weights {spec.name}: {human_size(size)}, {check} ({path})")
    if show and not card.weights:
        _say(f"{card.id}: no weights files")
    environment: dict[str, Any] = {"needed": state.needed, "path": None, "bytes": 0, "built_now": False}
    if state.needed:
        assert state.path is not None
        built_now = not state.built
        started = time.perf_counter()
        path = _build(entry, state.path, show) if built_now else state.path
        size = _env_bytes(path)
        environment.update(path=str(path), bytes=size, built_now=built_now, reason=state.reason)
        if show:
            how = f"built in {time.perf_counter() - started:.0f} s" if built_now else "already built"
            _say(f"{card.id}: own environment ({state.reason}) {how}, {human_size(size)} in {path}")
    elif show:
        _say(f"{card.id}: runs in medhub's own environment (nothing to build)")
    return {"model": card.id, "weights": {w["name"]: w["path"] for w in weights}, "weights_detail": weights,
            "weights_bytes": sum(w["bytes"] for w in weights), "environment": environment["path"],
            "environment_detail": environment}


def _build(entry: Any, target: Path, show: bool) -> Path:
    from medhub.hub import envs

    if not show:
        return envs.ensure_env(entry)
    with console.status(f"{entry.card.id}: building its environment with uv", spinner="dots") as status:
        def log(line: str) -> None:
            status.update(f"{entry.card.id}: building its environment: {line[:100]}")

        return envs.ensure_env(entry, log=log)


def _env_bytes(path: Path) -> int:
    """The size recorded when the environment was built, else measured now."""
    import json

    from medhub.hub import envs

    try:
        recorded = json.loads((path / envs.MARKER).read_text(encoding="utf-8")).get("bytes")
    except (OSError, ValueError):
        recorded = None
    return int(recorded) if isinstance(recorded, int) else envs.folder_size(path)


def _say(text: str) -> None:
    console.print(" ".join(text.split()), markup=False, highlight=False, soft_wrap=True)
