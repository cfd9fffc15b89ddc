from __future__ import annotations

import subprocess
import sys

from targetd import gc_tuning


def test_tune_freezes_the_start_up_objects_and_spaces_the_passes() -> None:
    code = (
        "import gc, json; from targetd import gc_tuning; before = gc.get_freeze_count();"
        " gc_tuning.tune(); print(json.dumps([before, gc.get_freeze_count(), gc.get_threshold()]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, frozen, thresholds = __import__("json").loads(out.stdout)
    assert before == 0
    assert frozen > 1000  # the interpreter's and the modules' objects
    assert tuple(thresholds) == gc_tuning.THRESHOLDS
