"""GPTQ: calibrated int4/int8 weight quantization (llmcompressor) exported as a classic GPTQ checkpoint.

``pack`` (the qweight/qzeros/scales/g_idx layout), ``rtn`` (round-to-nearest baseline and
code extraction), ``calibration`` (text -> token windows), ``engine`` (llmcompressor run),
``checkpoint`` (write / read back), ``evaluate`` (held-out metrics), ``convert`` (the flow).
"""
