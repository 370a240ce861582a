"""Which QEMU failures blame the host's KVM (boot verification then retries under TCG)."""

from __future__ import annotations

import pytest

from vmkeep.browse.bootverify import kvm_broke_qemu


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
