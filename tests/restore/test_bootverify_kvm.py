"""Whether this host's KVM works: the probe (cached per host and QEMU binary) and, as a fallback
during a boot, which QEMU failures blame the host's KVM (boot verification then uses TCG)."""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from vmkeep.browse import bootverify
from vmkeep.browse.bootverify import KVM_FAILED, BootResult, kvm_broke_qemu, kvm_verdict


@pytest.mark.parametrize(
    "stderr",
    [
        # a fresh nested host (2026-12-03): QEMU 7.2 aborts setting MSRs that -cpu host advertised
        "qemu-system-x86_64: ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: "
        "Assertion `ret == cpu->kvm_msr_buf->nmsrs' failed.\n",
        "KVM internal error. Suberror: 1\nemulation failure\n",
        "Could not access KVM kernel module: Permission denied\n"
        "qemu-system-x86_64: failed to initialize kvm: Permission denied\n",
    ],
)
def test_kvm_failures_are_recognised(stderr: str) -> None:
    assert kvm_broke_qemu(stderr)


@pytest.mark.parametrize(
    "stderr",
    [
        "",
        "qemu-system-x86_64: -drive file=nbd+unix:///?socket=/x: Could not open: No such file\n",
        "qemu-system-x86_64: terminating on signal 15 from pid 42\n",
    ],
)
def test_other_failures_are_the_guests_or_the_setups(stderr: str) -> None:
    assert not kvm_broke_qemu(stderr)


def _fake_qemu(path: Path, body: str) -> str:
    """A stand-in ``qemu-system-x86_64`` (Python) that logs each call's ``-cpu`` to ``calls``."""
    path.write_text(
        f"#!{sys.executable}\n"
        "import sys, time\n"
        f"open({str(path) + '.calls'!r}, 'a').write(sys.argv[sys.argv.index('-cpu') + 1] + '\\n')\n"
        + body
    )
    path.chmod(0o755)
    return str(path)


def _calls(qemu: str) -> list[str]:
    calls = Path(qemu + ".calls")
    return calls.read_text().split() if calls.exists() else []


@pytest.fixture(autouse=True)
def _fresh_verdicts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bootverify, "_verdicts", {})


def test_a_failing_probe_is_cached_per_qemu_binary(tmp_path: Path) -> None:
    aborts = (
        "sys.stderr.write('qemu-system-x86_64: ../../target/i386/kvm/kvm.c:3183: "
        "kvm_buf_set_msrs: Assertion failed.\\n')\nsys.exit(134)\n"
    )
    qemu = _fake_qemu(tmp_path / "qemu-a", aborts)
    verdict = kvm_verdict(qemu)
    assert verdict.cpu is None and verdict.why == "probe failed"
    assert "kvm_buf_set_msrs" in verdict.detail
    assert _calls(qemu) == list(bootverify.PROBE_CPUS)  # every -cpu model tried once
    assert kvm_verdict(qemu) == verdict
    assert _calls(qemu) == list(bootverify.PROBE_CPUS)  # cached: not probed again
    other = _fake_qemu(tmp_path / "qemu-b", aborts)
    kvm_verdict(other)
    assert _calls(other) == list(bootverify.PROBE_CPUS)  # another binary: its own probe


def test_an_internal_error_is_seen_without_waiting_for_qemu(tmp_path: Path) -> None:
    """KVM internal errors pause the guest and leave QEMU running: the probe reads stderr."""
    qemu = _fake_qemu(
        tmp_path / "qemu",
        "sys.stderr.write('KVM internal error. Suberror: 1\\n'); sys.stderr.flush()\n"
        "time.sleep(600)\n",
    )
    verdict = kvm_verdict(qemu)  # the fake sleeps 600 s; PROBE_TIMEOUT (30 s) bounds a miss
    assert (verdict.cpu, verdict.why) == (None, "internal error")
    assert verdict.detail == "KVM internal error. Suberror: 1"


def test_the_second_cpu_model_is_used_when_host_is_refused(tmp_path: Path) -> None:
    qemu = _fake_qemu(
        tmp_path / "qemu",
        "sys.exit(134 if sys.argv[sys.argv.index('-cpu') + 1] == 'host' else 85)\n",
    )
    assert kvm_verdict(qemu).cpu == "host,-arch-capabilities"


#: what QEMU 7.2 wrote before aborting on a nested host (2026-12-03)
ABORTED = (
    "qemu-system-x86_64: ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: "
    "Assertion `ret == cpu->kvm_msr_buf->nmsrs' failed."
)


def _fake_boots(monkeypatch: pytest.MonkeyPatch, qemu: str, reasons: list[str]) -> list[tuple]:
    """verify_boot's boots replaced: each returns the next of ``reasons`` (a KVM failure with
    :data:`ABORTED` as QEMU's stderr); returns the calls."""
    booted: list[tuple] = []

    def boot(*args: object) -> BootResult:
        booted.append(args[-2:])  # (accel, cpu)
        reason = reasons[len(booted) - 1]
        stderr = ABORTED if reason == KVM_FAILED else ""
        return BootResult("p", not reason, 1.0, "?", "bios", "x", reason, stderr_tail=stderr)

    monkeypatch.setattr(bootverify, "_boot", boot)
    monkeypatch.setattr(bootverify, "qemu_binary", lambda: qemu)
    monkeypatch.setattr(bootverify, "kvm_usable", lambda: True)
    return booted


def test_a_failed_probe_boots_under_tcg_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    qemu = _fake_qemu(tmp_path / "qemu", "sys.exit(1)\n")
    booted = _fake_boots(monkeypatch, qemu, [""])
    result = bootverify.verify_boot(None, "", "p", firmware="bios")  # type: ignore[arg-type]
    assert booted == [("tcg", "host")]
    assert result.accelerator == "tcg (kvm: probe failed)"


def test_a_kvm_failure_during_the_boot_still_falls_back_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe passed but the boot loader hit a KVM failure: TCG, and later boots skip KVM."""
    qemu = _fake_qemu(tmp_path / "qemu", "sys.exit(85)\n")
    booted = _fake_boots(monkeypatch, qemu, [KVM_FAILED, "", ""])
    result = bootverify.verify_boot(None, "", "p", firmware="bios")  # type: ignore[arg-type]
    assert booted == [("kvm", "host"), ("tcg", "host")]
    assert result.accelerator == "tcg (kvm: internal error)"
    # the verdict remembered for later boots keeps QEMU's last words, not vmkeep's summary
    assert kvm_verdict(qemu) == bootverify.KvmVerdict(None, "internal error", ABORTED)
    result = bootverify.verify_boot(None, "", "p", firmware="bios")  # type: ignore[arg-type]
    assert booted[-1] == ("tcg", "host") and len(booted) == 3
    assert result.accelerator == "tcg (kvm: internal error)"


def test_a_boot_keeps_qemus_last_words(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``_boot`` itself (a QEMU stand-in that aborts in KVM's glue, a point without disks):
    the result says KVM failed and carries what QEMU wrote to stderr."""
    qemu = _fake_qemu(
        tmp_path / "qemu",
        f"sys.stderr.write('early warning\\n' + {ABORTED!r} + '\\n')\nsys.exit(134)\n",
    )
    repo = SimpleNamespace(load_point=lambda point_id: SimpleNamespace(chunks={}))
    pattern = re.compile(bootverify.DEFAULT_EXPECT, re.MULTILINE)
    monkeypatch.setattr(bootverify, "qemu_binary", lambda: qemu)
    result = bootverify._boot(repo, "", "p", pattern, "x", 60.0, 64, "bios", "kvm")  # type: ignore[arg-type]
    assert result.reason == KVM_FAILED
    assert result.stderr_tail == "early warning\n" + ABORTED
    assert "stderr_tail" not in result.to_json()


@pytest.mark.skipif(
    not shutil.which("qemu-system-x86_64") or not os.access("/dev/kvm", os.R_OK | os.W_OK),
    reason="needs qemu-system-x86_64 and a usable /dev/kvm",
)
def test_the_real_qemu_runs_the_probe_guest_under_kvm() -> None:
    """This machine's KVM works (a nested host: ``-cpu host`` alone aborts in QEMU 7.2, without
    IA32_ARCH_CAPABILITIES it runs); the probe says so and names the model."""
    verdict = kvm_verdict()
    assert verdict.cpu in bootverify.PROBE_CPUS, verdict
    assert kvm_verdict() is verdict  # cached
