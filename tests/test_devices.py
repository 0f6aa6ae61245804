"""The device check (issue 10): the name, the model's card and this machine, each refused in one line."""

from __future__ import annotations

import pytest

from medhub.errors import MedhubError
from medhub.hub.catalog import get_model
from medhub.hub.devices import check_card_device, check_device, check_machine_device, parse_device

torch = pytest.importorskip("torch")


@pytest.mark.parametrize(("text", "parsed"), [("cpu", ("cpu", None)), ("CUDA", ("cuda", None)),
                                              ("cuda:1", ("cuda", 1)), (" mps ", ("mps", None))])
def test_known_device_names(text: str, parsed: tuple[str, int | None]) -> None:
    assert parse_device(text) == parsed


@pytest.mark.parametrize("text", ["tpu", "gpu", "cuda:", "cuda:x", "cpu:0", "mps:1", ""])
def test_unknown_device_names_are_one_line_errors(text: str) -> None:
    with pytest.raises(MedhubError, match=r"^unknown device '.*': use cpu, cuda \(or cuda:N\) or mps$"):
        parse_device(text)


def test_the_card_decides_which_devices_a_model_accepts() -> None:
    assert check_card_device("CPU", get_model("ct-body").card) == "cpu"
    assert check_card_device("cuda:1", get_model("deepbet").card) == "cuda:1"
    with pytest.raises(MedhubError, match="^model ct-body does not run on cuda: its card lists cpu only$"):
        check_card_device("cuda:1", get_model("ct-body").card)
    with pytest.raises(MedhubError, match="^model hdbet does not run on mps: its card lists cpu, cuda$"):
        check_card_device("mps", get_model("hdbet").card)


def test_the_machine_decides_whether_cuda_and_mps_are_there() -> None:
    assert check_machine_device("cpu") == check_device("cpu", get_model("deepbet").card) == "cpu"
    if torch.cuda.is_available():
        assert check_machine_device("cuda") == "cuda"
        count = torch.cuda.device_count()
        with pytest.raises(MedhubError, match=f"has {count} CUDA device"):
            check_machine_device(f"cuda:{count}")
    else:
        with pytest.raises(MedhubError, match="^--device cuda: this machine has no usable CUDA device"):
            check_device("cuda", get_model("deepbet").card)
    if not torch.backends.mps.is_available():
        with pytest.raises(MedhubError, match="^--device mps: Apple's MPS is not available on this machine"):
            check_machine_device("mps")
