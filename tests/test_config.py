"""One place reads the environment: medhub.config, documented by the README's table.

The table and the code must name the same variables, no module but config may read
``os.environ`` for a ``MEDHUB_*`` variable, and bad values are one-line errors.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from medhub import config
from medhub.config import Isolation, settings
from medhub.errors import MedhubError

ROOT = Path(__file__).resolve().parents[1]


def test_readme_table_lists_exactly_the_variables_config_reads() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Settings"):readme.index("## Development")]
    documented = re.findall(r"^\| `(MEDHUB_[A-Z_]+)` \|", section, flags=re.MULTILINE)
    assert documented == [v.name for v in config.VARIABLES]
    source = (ROOT / "src" / "medhub" / "config.py").read_text()
    named = set(re.findall(r'"(MEDHUB_[A-Z_]+)"', source))
    assert named == set(documented)


def test_no_other_module_reads_a_medhub_variable_from_the_environment() -> None:
    offenders = []
    for path in sorted((ROOT / "src" / "medhub").rglob("*.py")):
        if path.name == "config.py":
            continue
        text = path.read_text()
        if re.search(r"(environ(\.get)?\s*[\[(]\s*|getenv\(\s*|envvar=)[\"']MEDHUB_", text):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_defaults_follow_xdg_then_home(tmp_path: Path) -> None:
    found = settings({"XDG_CACHE_HOME": str(tmp_path / "c"), "XDG_DATA_HOME": str(tmp_path / "d")})
    assert found.weights_cache == (tmp_path / "c" / "medhub" / "weights").resolve()
    assert found.embeddings_cache == (tmp_path / "c" / "medhub" / "embeddings").resolve()
    assert found.heads == tmp_path / "d" / "medhub" / "heads"
    assert found.serve_data == tmp_path / "d" / "medhub" / "serve"
    assert found.isolation is Isolation.AUTO and found.scan_workers == 1
    assert found.weights_mirror is None and found.dicomweb_token is None and found.serve_token is None
    home = settings({})
    assert home.weights_cache == (Path.home() / ".cache" / "medhub" / "weights").resolve()
    assert home.envs == Path.home() / ".cache" / "medhub" / "envs"


def test_explicit_values_win_and_blank_means_unset(tmp_path: Path) -> None:
    found = settings({config.WEIGHTS_CACHE: str(tmp_path / "w"), config.CACHE: str(tmp_path / "m"),
                      config.WEIGHTS_MIRROR: "  https://mirror.example/w  ", config.ISOLATION: "Always",
                      config.SCAN_WORKERS: "3", config.DICOMWEB_TOKEN: " ", config.SERVE_TOKEN: "s3cret"})
    assert found.weights_cache == (tmp_path / "w").resolve()
    assert found.embeddings_cache == (tmp_path / "m" / "embeddings").resolve()
    assert found.weights_mirror == "https://mirror.example/w"
    assert found.isolation is Isolation.ALWAYS and found.scan_workers == 3
    assert found.dicomweb_token is None and found.serve_token == "s3cret"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (config.ISOLATION, "sometimes", "MEDHUB_ISOLATION='sometimes': expected auto, always or never"),
        (config.SCAN_WORKERS, "four", "MEDHUB_SCAN_WORKERS='four': expected a whole number of at least 1"),
        (config.SCAN_WORKERS, "0", "MEDHUB_SCAN_WORKERS='0': expected a whole number of at least 1"),
    ],
)
def test_bad_values_are_one_line_errors(variable: str, value: str, message: str) -> None:
    with pytest.raises(MedhubError) as caught:
        settings({variable: value})
    assert str(caught.value) == message


def test_modules_see_a_changed_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from medhub.heads.registry import heads_root
    from medhub.hub.weights import mirror_setting, weights_cache_dir

    monkeypatch.setenv(config.WEIGHTS_CACHE, str(tmp_path / "one"))
    monkeypatch.setenv(config.HEADS, str(tmp_path / "heads"))
    monkeypatch.delenv(config.WEIGHTS_MIRROR, raising=False)
    assert weights_cache_dir() == (tmp_path / "one").resolve() and mirror_setting() is None
    assert heads_root() == tmp_path / "heads"
    monkeypatch.setenv(config.WEIGHTS_CACHE, str(tmp_path / "two"))
    assert weights_cache_dir() == (tmp_path / "two").resolve()
