"""Conversion options as typed records, in one place: what the CLI and the Python API accept.

* :class:`CommonOptions` -- what every format takes (adapter, name, verify, threads, progress);
* :class:`GGUFOptions`, :class:`ONNXOptions`, :class:`GPTQOptions` -- what only that format
  understands, one frozen record each;
* the records of one run and the routing of keywords to them are in :mod:`.plan`
  (:class:`~.plan.ConversionPlan`, :func:`~.plan.plan_conversion`).

Each record checks its own values when it is built and raises :class:`InputError` naming
the option both ways (``--block-size / block_size=``), so a bad value is refused before
anything is read or written, whichever way it came in. ``edgekit convert`` builds the records
from the flags the user gave and :func:`edgekit.convert` from its keyword arguments, both
through :func:`~.plan.plan_conversion`, and :func:`edgekit.converters.registry.convert_formats`
runs a plan.

Routing keywords: every keyword is the field name of exactly one record (``quants`` aside:
it is split by format, since the type names of GGUF and ONNX are disjoint and GPTQ's
int4/int8 name its bits). A keyword of a format the run does not produce is an error, not
silently dropped: ``to="gguf", target="cuda"`` most likely means the caller forgot ``onnx``
in ``to``, and a dropped option would convert something other than what was asked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from edgekit.errors import InputError, UnknownChoiceError
from edgekit.progress import ProgressFn

from .gptq.calibration import DEFAULT_SAMPLES, DEFAULT_SEQ_LEN
from .gptq.engine import DEFAULT_ACT_ORDER, DEFAULT_GROUP_SIZE
from .onnx.quants import DEFAULT_BLOCK_SIZE, Int4Algo, Target
from .quality import DEFAULT_EVAL_TOKENS, EvalSettings, QualityGate, QualitySettings
from .registry import DEFAULT_QUANTS, Format

GPTQ_ONNX_QUANT = "int4"  # the builder precision that keeps GPTQ's prequantized weights as MatMulNBits

# keywords whose CLI spelling is not ``--`` + the keyword with dashes
_CLI_SPELLING = {"quants": "--quant", "fit_ctx": "--ctx"}
# names the converter functions of 0.1 use, accepted by edgekit.convert for the same option
ALIASES = {"verify_artifacts": "verify", "adapter_dir": "adapter"}


def opt(name: str, value: str = "") -> str:
    """An option named for both audiences: ``--block-size / block_size=`` (``value`` appended)."""
    if name == "verify":
        return "--no-verify / verify=False"
    flag = _CLI_SPELLING.get(name, "--" + name.replace("_", "-"))
    return f"{flag}{' ' + value if value else ''} / {name}={value}"


def split_names(value: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    if value is not None and not isinstance(value, str | list | tuple):
        raise InputError(f"{opt('quants')} must be a comma-separated string or a list of names, not {value!r}",
                         hint=f"pass {opt('quants', 'f16,q8_0')}")
    items = value.split(",") if isinstance(value, str) else list(value or ())
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise InputError(f"quant types must be strings, not {item!r}", hint=f"pass {opt('quants', 'f16,q8_0')}")
        if item.strip() and item.strip().lower() not in out:
            out.append(item.strip().lower())
    return tuple(out)


def _int(name: str, value: Any, ok: Callable[[int], bool], must: str, fix: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not ok(value):
        raise InputError(f"{opt(name)} must be {must}, not {value!r}", hint=f"pass {opt(name, fix)}")


def _any(value: int) -> bool:
    return True


def _bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise InputError(f"{name}= must be True or False, not {value!r}", hint=f"pass {name}=True or {name}=False")


def _path(record: Any, name: str) -> Path | None:
    value = getattr(record, name)
    if value is None:
        return None
    if not isinstance(value, str | Path):
        raise InputError(f"{opt(name)} must be a path, not {value!r}", hint=f"pass {opt(name, 'DIR')}")
    object.__setattr__(record, name, Path(value))
    return Path(value)


@dataclass(frozen=True)
class CommonOptions:
    """What every format takes."""

    adapter: Path | None = None  # PEFT LoRA adapter directory, merged before converting
    name: str | None = None  # base name of the outputs (default: the model directory's name)
    verify: bool = True  # verify every artifact against the source (an artifact that fails is not kept)
    threads: int | None = None  # quantization and verification threads (None: all cores)
    progress: ProgressFn | None = field(default=None, compare=False)
    # quality (converters.quality): what it is measured on, and the opt-in per-artifact gate
    eval_tokens: int = DEFAULT_EVAL_TOKENS  # scored positions of the evaluation set
    eval_text: Path | None = None  # UTF-8 text to evaluate on (None: the packaged evaluation mix)
    max_kl: float | None = None  # refuse an artifact whose mean KL vs the source is above this
    max_ppl_increase: float | None = None  # ... or whose perplexity rises by more than this many percent

    def __post_init__(self) -> None:
        _path(self, "adapter")
        if self.name is not None and (not isinstance(self.name, str) or not self.name.strip()):
            raise InputError(f"{opt('name')} must be a non-empty string, not {self.name!r}",
                             hint="pass a base name for the output files, or leave it out")
        _bool("verify", self.verify)
        if self.threads is not None:
            _int("threads", self.threads, lambda v: v >= 1, "an integer >= 1 (or unset: all cores)", "4")
        if self.progress is not None and not callable(self.progress):
            raise InputError(f"progress must be a callable taking a ProgressEvent, not {self.progress!r}")
        _int("eval_tokens", self.eval_tokens, lambda v: v >= 1, "an integer >= 1", str(DEFAULT_EVAL_TOKENS))
        if (text := _path(self, "eval_text")) is not None and not text.is_file():
            raise InputError(f"evaluation text {text} does not exist",
                             hint=f"pass a UTF-8 text file with {opt('eval_text', 'FILE')}, or leave it out")
        for name in ("max_kl", "max_ppl_increase"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value < 0
                                      or value != value):
                raise InputError(f"{opt(name)} must be a number >= 0, not {value!r}",
                                 hint=f"pass e.g. {opt(name, '0.05' if name == 'max_kl' else '10')}")

    def quality(self) -> QualitySettings:
        text = source = None
        if self.eval_text is not None:
            try:
                text = self.eval_text.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise InputError(f"cannot read the evaluation text {self.eval_text}: {e}",
                                 hint=f"pass a UTF-8 text file with {opt('eval_text', 'FILE')}") from e
            source = str(self.eval_text)
        gate = QualityGate(None if self.max_kl is None else float(self.max_kl),
                           None if self.max_ppl_increase is None else float(self.max_ppl_increase))
        return QualitySettings(EvalSettings(text=text, source=source, tokens=self.eval_tokens), gate)

    def converter_kwargs(self) -> dict[str, Any]:
        """The keyword names the converter functions take."""
        return {"adapter_dir": self.adapter, "name": self.name, "verify_artifacts": self.verify,
                "threads": self.threads, "progress": self.progress, "quality": self.quality()}


@dataclass(frozen=True)
class GGUFOptions:
    """``--to gguf``: llama.cpp types."""

    format: ClassVar[Format] = Format.GGUF
    quants: tuple[str, ...] | None = None  # None: f16
    pre_tokenizer: str | None = None  # llama.cpp pre-tokenizer name, when detection cannot tell
    # importance matrix for the quantizer: True computes one from the model on the calibration
    # text (written to OUT_DIR/imatrix.gguf); a path reads one (llama-imatrix's GGUF or .dat)
    imatrix: bool | Path | None = None
    calibration: Path | None = None  # text for a computed imatrix (None: the packaged calibration mix)
    samples: int | None = None  # windows for a computed imatrix (None: GPTQ's default; fewer if the text is short)
    seq_len: int | None = None  # tokens per window (None: GPTQ's default, at most the model's context)
    tensor_type: tuple[str, ...] = ()  # "REGEX=TYPE" per-tensor types, as llama-quantize's --tensor-type
    # one more artifact, a mix of types per tensor class fitted to a file size ("1.2GB") or to what a
    # device profile leaves for weights at fit_ctx tokens of context (converters/gguf/fit.py)
    fit_size: str | int | None = None
    fit: str | None = None  # a profile name (edgekit profile list)
    fit_ctx: int | None = None  # context the --fit profile's budget keeps room for (default 4096)
    fit_method: str = "kl"  # how each class's loss per type is priced: kl (measured) or error (proxy)

    def __post_init__(self) -> None:
        from .gguf.pretokenizers import PRE_TOKENIZERS
        from .gguf.quants import FLOAT_QUANTS, parse_quants

        if self.quants is not None:
            object.__setattr__(self, "quants", tuple(q.name for q in parse_quants(split_names(self.quants))))
        # any llama.cpp name is accepted (the converter trusts names outside edgekit's table)
        if self.pre_tokenizer is not None and (not isinstance(self.pre_tokenizer, str)
                                               or not self.pre_tokenizer.strip() or " " in self.pre_tokenizer):
            raise InputError(f"{opt('pre_tokenizer')} must be a llama.cpp pre-tokenizer name, not "
                             f"{self.pre_tokenizer!r}", hint=f"edgekit's table: {', '.join(PRE_TOKENIZERS)}")
        self._check_fit()
        quantized = [q for q in self.quant_names if q not in FLOAT_QUANTS] + (["fit"] if self.fits else [])
        self._check_imatrix(quantized)
        object.__setattr__(self, "tensor_type", parse_tensor_types(self.tensor_type, bool(self.imatrix)))
        if self.tensor_type and not quantized:
            raise InputError(f"{opt('tensor_type')} sets types of quantized tensors, but this run makes "
                             f"{','.join(self.quant_names)} only", hint=f"add a quantized type, e.g. "
                                                                        f"{opt('quants', 'q4_k_m')}")

    @property
    def fits(self) -> bool:
        """A fitted mix is asked for (--fit-size or --fit)."""
        return self.fit_size is not None or self.fit is not None

    def _check_fit(self) -> None:
        from .gguf.fit import METHODS, parse_size

        if self.fit_size is not None and self.fit is not None:
            raise InputError(f"{opt('fit_size')} and {opt('fit')} both set the budget of the fitted mix",
                             hint="pass one of them")
        if self.fit_size is not None:
            parse_size(self.fit_size)
        if self.fit is not None:
            from edgekit.profiles.store import get_profile

            get_profile(str(self.fit))  # an unknown name lists the known ones
        if self.fit_ctx is not None:
            if self.fit is None:
                raise InputError(f"{opt('fit_ctx')} sizes the KV cache a --fit profile keeps room for, but no "
                                 f"profile is given", hint=f"add {opt('fit', 'PROFILE')}, or drop {opt('fit_ctx')}")
            _int("fit_ctx", self.fit_ctx, lambda v: v >= 1, "a positive number of tokens", "4096")
        if self.fit_method not in METHODS:
            raise UnknownChoiceError("--fit-method / fit_method", str(self.fit_method), METHODS)

    def _check_imatrix(self, quantized: list[str]) -> None:
        from .gguf.imatrix import read_imatrix
        from .gguf.quantize import imatrix_needed
        from .gguf.quants import quant

        value = self.imatrix
        if value is False:
            object.__setattr__(self, "imatrix", value := None)
        if value is not None and not isinstance(value, bool | str | Path):
            raise InputError(f"{opt('imatrix')} must be True (compute one) or a file, not {value!r}",
                             hint=f"pass {opt('imatrix', 'True')} or {opt('imatrix', 'FILE')}")
        if isinstance(value, str | Path):
            object.__setattr__(self, "imatrix", value := Path(value))
            read_imatrix(value)  # a clear error now (missing, not an imatrix); names are checked against the model
        for name in ("calibration", "samples", "seq_len"):
            if name == "calibration" and self.fits and self.fit_method == "kl":
                continue  # the kl fit scores its candidates on the calibration text
            if getattr(self, name) is not None and value is not True:
                raise InputError(f"{opt(name)} sets how a computed importance matrix is made, but "
                                 f"{'a file is given' if value else 'none is computed'} for GGUF",
                                 hint=f"add --imatrix / imatrix=True to compute one, or drop {opt(name)}")
        if self.samples is not None or self.seq_len is not None:
            from .gptq.calibration import check_window

            for name in ("samples", "seq_len"):
                if getattr(self, name) is not None:
                    _int(name, getattr(self, name), _any, "an integer", str(DEFAULT_SAMPLES if name == "samples"
                                                                            else DEFAULT_SEQ_LEN))
            check_window(self.samples or DEFAULT_SAMPLES, self.seq_len or DEFAULT_SEQ_LEN, None)
        if (cal := _path(self, "calibration")) is not None:
            if not cal.exists():
                raise InputError(f"calibration text {cal} does not exist",
                                 hint=f"pass a UTF-8 text file, a .jsonl file or a directory of them with "
                                      f"{opt('calibration')}")
        if value is not None and not quantized:
            raise InputError(f"{opt('imatrix')} guides llama.cpp's quantizer, but this run makes "
                             f"{','.join(self.quant_names)} only",
                             hint=f"add a quantized type, e.g. {opt('quants', 'q4_k_m')}, or drop {opt('imatrix')}")
        if value is None:
            for name in quantized:
                if name != "fit" and quant(name).needs_imatrix:
                    raise imatrix_needed(name)

    @property
    def quant_names(self) -> tuple[str, ...]:
        if self.quants is None and self.fits:
            return ()  # the fitted mix alone
        return self.quants or split_names(DEFAULT_QUANTS[Format.GGUF])

    def converter_kwargs(self) -> dict[str, Any]:
        return {"pre_override": self.pre_tokenizer, "imatrix": self.imatrix, "calibration": self.calibration,
                "fit_size": self.fit_size, "fit_profile": self.fit, "fit_ctx": self.fit_ctx,
                "fit_method": self.fit_method,
                "imatrix_samples": self.samples or DEFAULT_SAMPLES, "imatrix_seq_len": self.seq_len or DEFAULT_SEQ_LEN,
                "tensor_types": tuple(tuple(t.rsplit("=", 1)) for t in self.tensor_type)}


def parse_tensor_types(value: Any, have_imatrix: bool) -> tuple[str, ...]:
    """``"attn_v=q8_0"`` items (a string or a list of them) -> ``("attn_v=Q8_0", ...)``, each a
    regular expression over GGUF tensor names and a ggml type llama.cpp can quantize to."""
    import re

    from .gguf.quantize import imatrix_needed
    from .gguf.quants import IMATRIX_TYPES, TENSOR_TYPES

    items = [value] if isinstance(value, str) else list(value or ())
    out: list[str] = []
    for item in items:
        pattern, sep, type_name = str(item).rpartition("=")
        if not isinstance(item, str) or not sep or not pattern or not type_name:
            raise InputError(f"{opt('tensor_type')} takes PATTERN=TYPE, not {item!r}",
                             hint=f"e.g. {opt('tensor_type', 'attn_v=q8_0')} (a regex over GGUF tensor names)")
        try:
            re.compile(pattern)
        except re.error as e:
            raise InputError(f"{opt('tensor_type')} {item}: {pattern!r} is not a regular expression ({e})",
                             hint="escape special characters, e.g. blk\\.0\\.ffn_down=q6_k") from e
        key = type_name.strip().upper()
        if key not in TENSOR_TYPES:
            raise UnknownChoiceError("ggml tensor type", type_name, [n.lower() for n in TENSOR_TYPES])
        if key in IMATRIX_TYPES and not have_imatrix:
            raise imatrix_needed(key.lower())
        out.append(f"{pattern}={key}")
    return tuple(out)


@dataclass(frozen=True)
class ONNXOptions:
    """``--to onnx``: ONNX Runtime GenAI builds."""

    format: ClassVar[Format] = Format.ONNX
    quants: tuple[str, ...] | None = None  # None: fp32,int4 (int4 when built from a GPTQ checkpoint)
    target: Target = Target.CPU  # decides the graph the builder emits
    block_size: int = DEFAULT_BLOCK_SIZE  # int4/int8: weights per scale
    int4_algo: Int4Algo = Int4Algo.K_QUANT
    from_gptq: Path | None = None  # build from this GPTQ checkpoint (its calibrated int4 weights)

    def __post_init__(self) -> None:
        from .onnx.quants import check_block_size, parse_algo, parse_onnx_quants, parse_target

        if self.quants is not None:
            object.__setattr__(self, "quants", tuple(q.name for q in parse_onnx_quants(list(split_names(self.quants)))))
        object.__setattr__(self, "target", parse_target(self.target))
        object.__setattr__(self, "int4_algo", parse_algo(self.int4_algo))
        _int("block_size", self.block_size, _any, "an integer", str(DEFAULT_BLOCK_SIZE))
        check_block_size(self.block_size)
        if (src := _path(self, "from_gptq")) is not None:
            from .gptq.checkpoint import read_layout

            read_layout(src)  # a clear error now (config + header, no tensor read), not a builder traceback later
            object.__setattr__(self, "quants", gptq_onnx_quants(self.quants, f"{opt('from_gptq')} {src}"))

    @property
    def quant_names(self) -> tuple[str, ...]:
        return self.quants or split_names(DEFAULT_QUANTS[Format.ONNX])

    def converter_kwargs(self) -> dict[str, Any]:
        return {"target": self.target, "block_size": self.block_size, "int4_algo": self.int4_algo,
                "source_override": self.from_gptq}


@dataclass(frozen=True)
class GPTQOptions:
    """``--to gptq``: calibrated GPTQ checkpoints (llmcompressor)."""

    format: ClassVar[Format] = Format.GPTQ
    bits: int = 4
    group_size: int = DEFAULT_GROUP_SIZE  # input columns per scale; -1: one group per row
    act_order: bool = DEFAULT_ACT_ORDER
    calibration: Path | None = None  # text file, directory or JSONL (None: the packaged calibration mix)
    samples: int = DEFAULT_SAMPLES
    seq_len: int = DEFAULT_SEQ_LEN
    compressed_tensors: bool = False  # also write llmcompressor's compressed-tensors checkpoint

    def __post_init__(self) -> None:
        from .gptq.calibration import check_window
        from .gptq.pack import check_bits, check_group_value

        _int("bits", self.bits, _any, "4 or 8", "4")
        check_bits(self.bits)
        _int("group_size", self.group_size, _any, "an integer", "128")
        check_group_value(self.group_size)
        _bool("act_order", self.act_order)
        _bool("compressed_tensors", self.compressed_tensors)
        _int("samples", self.samples, _any, "an integer", str(DEFAULT_SAMPLES))
        _int("seq_len", self.seq_len, _any, "an integer", str(DEFAULT_SEQ_LEN))
        check_window(self.samples, self.seq_len, None)  # the model's context is checked once it is read
        if (cal := _path(self, "calibration")) is not None and not cal.exists():
            raise InputError(f"calibration text {cal} does not exist",
                             hint=f"pass a UTF-8 text file, a .jsonl file or a directory of them with "
                                  f"{opt('calibration')}")

    @property
    def quant_names(self) -> tuple[str, ...]:
        return (f"int{self.bits}",)

    def converter_kwargs(self) -> dict[str, Any]:
        return {"bits": self.bits, "group_size": self.group_size, "act_order": self.act_order,
                "calibration": self.calibration, "samples": self.samples, "seq_len": self.seq_len,
                "compressed_tensors": self.compressed_tensors}


FormatOptions = GGUFOptions | ONNXOptions | GPTQOptions


def gptq_onnx_quants(asked: tuple[str, ...] | None, source: str) -> tuple[str, ...]:
    """ONNX built from a GPTQ checkpoint keeps its int4 codes: int4 is the one type it can be."""
    if asked and set(asked) - {GPTQ_ONNX_QUANT}:
        raise InputError(f"ONNX built from a GPTQ checkpoint ({source}) is {GPTQ_ONNX_QUANT} only, not "
                         f"{','.join(q for q in asked if q != GPTQ_ONNX_QUANT)}",
                         hint="drop the other ONNX types, or build them from the model directory in a separate run")
    return (GPTQ_ONNX_QUANT,)
