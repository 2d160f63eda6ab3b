"""precision=auto picks bf16 autocast only on CPUs that multiply bf16 in hardware: oneDNN accepts
bf16 on any AVX512 CPU and emulates it there, 2-3x slower than fp32."""

from __future__ import annotations

from modlab.training.trainer import cpu_has_fast_bf16


def _cpuinfo(tmp_path, flags: str):
    p = tmp_path / "cpuinfo"
    p.write_text(f"processor\t: 0\nmodel name\t: Xeon\nflags\t\t: fpu sse2 avx2 {flags}\n\nprocessor\t: 1\n")
    return str(p)


def test_avx512_without_bf16_units_is_not_fast(tmp_path):
    assert not cpu_has_fast_bf16(_cpuinfo(tmp_path, "avx512f avx512bw avx512_vnni"))


def test_avx512_bf16_or_amx_is_fast(tmp_path):
    assert cpu_has_fast_bf16(_cpuinfo(tmp_path, "avx512f avx512_bf16"))
    assert cpu_has_fast_bf16(_cpuinfo(tmp_path, "avx512f amx_tile amx_bf16"))
