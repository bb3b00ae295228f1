"""Hardware profiles (data) and the profiler.

* :mod:`.schema` -- the profile dataclasses, enums and validator; :mod:`.store` -- shipped
  (``data/*.toml``) and calibrated profiles; :mod:`.detect` / :mod:`.calibrate` -- this host.
* :mod:`.shapes` -- tensor shapes and per-tensor quant types; :mod:`.costs` -- memory and
  speed (the roofline model and its efficiency tables); :mod:`.quality` -- measured and
  estimated quality (published figures scaled to the measured types); :mod:`.planner` --
  ``recommend``.

Nothing here imports numpy, gguf or llama_cpp at import time.
"""
