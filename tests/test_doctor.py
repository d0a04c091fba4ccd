import sys
import types

import pytest

from simsiam_eval.cli import command_modules, main
from simsiam_eval.commands import doctor


def fake_module(monkeypatch, name, **attributes):
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    monkeypatch.setitem(sys.modules, name, module)


def test_doctor_prints_every_section_and_every_command(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for heading in ("versions", "devices", "paths", "commands"):
        assert f"\n{heading}\n" in out
    for library in ("python", "torch", "torchvision", "faiss", "detectron2", "timm", "scikit-learn", "submitit"):
        assert f"\n  {library} " in out
    for row in ("CUDA", "feature cache", "results", "data root"):
        assert f"\n  {row}" in out
    for command in doctor.NEEDS:
        assert f"\n  {command} " in out


def test_every_cli_command_has_a_doctor_entry():
    assert set(doctor.NEEDS) == set(command_modules()) - {"doctor"}


def test_doctor_transfer_fails_without_detectron2(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "detectron2", None)     # makes `import detectron2` raise ImportError
    assert main(["doctor", "transfer"]) == 1
    out = capsys.readouterr().out
    assert "transfer  cannot run: needs detectron2\n" in out
    assert "detectron2  install it from the official repository" in out
    assert main(["doctor", "convert"]) == 0                   # its Detectron2 check is optional
    assert main(["doctor"]) == 0


def test_doctor_transfer_passes_with_detectron2_and_its_extension(monkeypatch):
    fake_module(monkeypatch, "detectron2", __version__="0.6", __path__=[])
    fake_module(monkeypatch, "detectron2._C")
    assert doctor.probe_detectron2() == doctor.Probe("0.6", "C++ extension loads")
    assert main(["doctor", "transfer"]) == 0
    monkeypatch.setitem(sys.modules, "detectron2._C", None)  # installed, extension broken
    assert doctor.probe_detectron2().version is None
    assert main(["doctor", "transfer"]) == 1


@pytest.mark.parametrize("attributes, note", [
    ({}, "CPU build"),
    ({"StandardGpuResources": object, "get_num_gpus": lambda: 2}, "GPU build, 2 GPU(s) visible"),
])
def test_faiss_build_detection(monkeypatch, attributes, note):
    fake_module(monkeypatch, "faiss", __version__="1.9.0", **attributes)
    assert doctor.probe_faiss() == doctor.Probe("1.9.0", note)


def test_faiss_missing_leaves_knn_runnable(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "faiss", None)
    assert doctor.probe_faiss() == doctor.Probe(None, "not installed")
    assert main(["doctor", "knn"]) == 0
    out = capsys.readouterr().out
    assert "knn       ok; without faiss: exact torch search\n" in out and "  faiss  pip install faiss-cpu" in out


def test_broken_torch_fails_plain_doctor(monkeypatch):
    monkeypatch.setattr(doctor, "PROBES", {**doctor.PROBES, "torch": lambda: doctor.Probe(None, "not installed")})
    assert main(["doctor"]) == 1
