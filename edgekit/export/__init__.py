"""Where an artifact goes next: Ollama (a Modelfile beside the GGUF) and LM Studio (its models layout).

    >>> from edgekit.export import write_modelfile, export_lmstudio
    >>> write_modelfile("out/model-q4_k_m.gguf")            # doctest: +SKIP
    >>> export_lmstudio("out/model-q4_k_m.gguf")            # doctest: +SKIP
"""

from __future__ import annotations

from .lmstudio import LMStudioExport, export_lmstudio, require_gguf
from .ollama import Modelfile, plan_modelfile, write_modelfile

__all__ = ["LMStudioExport", "Modelfile", "export_lmstudio", "plan_modelfile", "require_gguf", "write_modelfile"]
