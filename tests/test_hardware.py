"""What the machine computes natively: bf16 where AMX/AVX512-BF16 (or a bf16 GPU) are there, oneDNN's own check."""

from __future__ import annotations

import torch

from fcnkit import hardware


def test_native_bf16_follows_the_cpu_checks(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert hardware.native_bf16(cpu) is False
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert hardware.native_bf16(cpu) is True
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")  # an older torch without the check: the other decides
    assert hardware.native_bf16(cpu) is False
    assert hardware.native_bf16(torch.device("meta")) is False


def test_onednn_bf16_is_oneDNNs_own_answer(monkeypatch):
    assert hardware.onednn_bf16() == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    # native bf16 (AVX512-BF16, AMX) implies oneDNN's bf16 path (AVX512BW/VL/DQ)
    assert hardware.onednn_bf16() or not hardware.native_bf16(torch.device("cpu"))


def test_the_emulation_warning_names_the_fix():
    assert "precision='auto'" in hardware.EMULATED_BF16 and "fp32" in hardware.EMULATED_BF16


def test_warn_if_emulated_only_for_bf16_on_a_cpu_without_it(monkeypatch, recwarn):
    import pytest

    monkeypatch.setattr(hardware, "native_bf16", lambda device: False)
    with pytest.warns(UserWarning, match="PyTorch emulates it"):
        hardware.warn_if_emulated("bf16", torch.device("cpu"))
    hardware.warn_if_emulated("fp32", torch.device("cpu"))
    hardware.warn_if_emulated("bf16", torch.device("meta"))
    monkeypatch.setattr(hardware, "native_bf16", lambda device: True)
    hardware.warn_if_emulated("bf16", torch.device("cpu"))
    assert not [w for w in recwarn if "emulates" in str(w.message)]
