"""$SDCPU_HOME holds what runs as code: it is made private, and a home others could write to is refused."""

import stat

import pytest


def test_the_home_is_made_private_and_one_others_can_write_to_is_refused(tmp_path, monkeypatch):
    from sdcpu.errors import UsageError
    from sdcpu.system import home

    monkeypatch.setenv("SDCPU_HOME", str(tmp_path / "new" / "home"))
    made = home.sdcpu_home()
    assert made.is_dir() and stat.S_IMODE(made.stat().st_mode) == 0o700
    made.chmod(0o775)
    with pytest.raises(UsageError, match=r"home is writable by others \(mode 775\).*SDCPU_HOME_SHARED=1"):
        home.sdcpu_home()
    monkeypatch.setenv("SDCPU_HOME_SHARED", "1")
    assert home.sdcpu_home() == made  # the sharing is meant
