import os
import stat

import pytest

from organic_sd.files import atomic_json, atomic_write


def test_atomic_files_get_the_usual_permissions_and_leave_no_temporaries(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644  # not mkstemp's owner-only 0600

    def fail(tmp):
        open(tmp, "w").write("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(tmp_path / "b.bin", fail)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
