import platform

import pytest

from marketrec.core.memory import keep_freed_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_takes_the_thresholds() -> None:
    # False would mean a threshold out of glibc's range (the mmap one is capped at 32 MB)
    assert keep_freed_memory() is True
    # a second call is the same one-time setting, not another mallopt
    assert keep_freed_memory() is True
