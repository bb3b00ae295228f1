"""A transformers causal LM run one decoder layer at a time over many sequences.

Verification needs the source model's logits on the evaluation set (once per run) and the
logits of the source model carrying each artifact's own weights on the probe set. Holding the
whole model for that costs the model's size again beside the artifact's runtime: a 7B bf16
source would need 13.5 GB on top of a 4 GB q4_k_m. Here the decoder layers' tensors live on
the meta device; layer ``i``'s tensors are loaded (from the source's safetensors, or from an
artifact's dequantized weights), every sequence is advanced through it, and they are dropped.
Resident: the embedding, the LM head, one layer and the hidden states (sequences x tokens x
hidden) -- GPTQ's sequential pipeline, for inference.

The model's own code does all the arithmetic, whatever the architecture:

1. **record**: per sequence, the model runs with each decoder layer replaced by a stub that
   keeps the layer's arguments (attention mask, position embeddings: per layer type on Gemma
   3, sliding or global) and passes the hidden state through; the first stub's input is the
   embedding output.
2. **layers**: each real layer runs on each sequence's hidden state with that sequence's
   recorded arguments.
3. **replay**: the model's own forward runs again with stubs, the last returning the finished
   hidden state, so the final norm, the LM head (only on the positions asked for) and any
   logit soft-capping are the model's own.

A model whose tensors are all resident (a LoRA run merged by PEFT) runs through the same three
steps; its layers are simply never dropped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

LayerFn = Callable[[int], None]


@contextlib.contextmanager
def _params_on_meta() -> Iterator[None]:
    """Every parameter created inside is put on the meta device (buffers stay real: RoPE
    frequencies and embedding scales are computed at construction, not read from a checkpoint)."""
    import torch

    register = torch.nn.Module.register_parameter

    def on_meta(self: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = torch.nn.Parameter(param.to("meta"), requires_grad=False)
        register(self, name, param)

    torch.nn.Module.register_parameter = on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register  # type: ignore[method-assign]


def empty_model(model_dir: Path, dtype: Any) -> Any:
    """The model of ``model_dir``'s config with its parameters on the meta device (no memory, no init)."""
    from transformers import AutoConfig
    from transformers.initialization import no_init_weights

    config = AutoConfig.from_pretrained(model_dir)
    with _params_on_meta(), no_init_weights():
        model = _from_config(config)(config, dtype=dtype, **reference_attention(config))
    if getattr(config, "tie_word_embeddings", False) and not getattr(model.config, "tie_word_embeddings", True):
        # a multimodal checkpoint tying at its top level (Qwen3.5's small models) whose text config
        # says otherwise, run as the causal LM of that text config: tie it as the checkpoint's class does
        model.config.tie_word_embeddings = True
    model.tie_weights()
    return model.eval()


def _from_config(config: Any) -> Any:
    """AutoModelForCausalLM.from_config, or the checkpoint's own class where the auto table lacks
    its config (Mistral3ForConditionalGeneration: its text path is what the reference runs)."""
    import transformers
    from transformers import AutoModelForCausalLM

    if type(config) in transformers.models.auto.modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING:
        return AutoModelForCausalLM.from_config
    own = next((getattr(transformers, a) for a in (config.architectures or []) if hasattr(transformers, a)), None)
    return own._from_config if own is not None else AutoModelForCausalLM.from_config


def reference_attention(config: Any) -> dict[str, str]:
    """transformers' SDPA and flash kernels skip attention logit soft-capping (Gemma 2): the
    reference must run the eager kernel, which applies it, or it is another model."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return {"attn_implementation": "eager"} if getattr(text, "attn_logit_softcapping", None) is not None else {}


def decoder_layers(model: Any) -> Any:
    """The model's decoder layers: the module list as long as the config's layer count."""
    import torch

    n = int(getattr(model.config.get_text_config(), "num_hidden_layers", 0) or 0)
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n and n > 0]
    if len(lists) != 1:
        raise NotImplementedError(f"{type(model).__name__}: cannot tell its decoder layers apart "
                                  f"({len(lists)} module lists of {n})")
    return lists[0]


@dataclass
class _Owner:
    module: Any
    attr: str
    buffer: bool = False  # a persistent buffer (saved in the checkpoint: Gemma 4's layer_scalar)

    def get(self) -> Any:
        return (self.module._buffers if self.buffer else self.module._parameters)[self.attr]

    def put(self, tensor: Any) -> None:
        (self.module._buffers if self.buffer else self.module._parameters)[self.attr] = tensor


class LayerwiseLM:
    """``model`` run layer by layer; parameters (and the persistent buffers a checkpoint stores, which
    the model otherwise keeps at their constructed values) are addressed by their canonical (first) name."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.layers = decoder_layers(model)
        owners: dict[int, list[_Owner]] = {}
        first: dict[int, str] = {}
        self.aliases: dict[str, str] = {}  # every name -> canonical name (tied weights share one)
        for mod_name, module in model.named_modules(remove_duplicate=False):
            for attr, p in module.named_parameters(recurse=False, remove_duplicate=False):
                full = f"{mod_name}.{attr}" if mod_name else attr
                owners.setdefault(id(p), []).append(_Owner(module, attr))
                self.aliases[full] = first.setdefault(id(p), full)
            for attr, b in module.named_buffers(recurse=False, remove_duplicate=False):
                if b is None or attr in module._non_persistent_buffers_set:
                    continue
                full = f"{mod_name}.{attr}" if mod_name else attr
                owners.setdefault(id(b), []).append(_Owner(module, attr, buffer=True))
                self.aliases[full] = first.setdefault(id(b), full)
        self._owners = {first[k]: v for k, v in owners.items()}
        layer_of: dict[int, int] = {}
        for i, layer in enumerate(self.layers):
            for p in (*layer.parameters(), *layer.buffers()):
                layer_of[id(p)] = i
        self.layer_names: list[list[str]] = [[] for _ in self.layers]
        self.resident_names: list[str] = []
        for name, owner in self._owners.items():
            at = layer_of.get(id(owner[0].get()))
            (self.layer_names[at] if at is not None else self.resident_names).append(name)

    def param(self, name: str) -> torch.nn.Parameter:
        p: torch.nn.Parameter = self._owners[self.aliases[name]][0].get()
        return p

    def set(self, name: str, tensor: torch.Tensor) -> None:
        """Give every owner of ``name`` (tied ones included) ``tensor``, in the parameter's dtype."""
        import torch

        old = self.param(name)
        if tuple(tensor.shape) != tuple(old.shape):
            raise ValueError(f"{name}: shape {tuple(tensor.shape)} where the model has {tuple(old.shape)}")
        new = torch.nn.Parameter(tensor.to(old.dtype), requires_grad=False)
        for o in self._owners[self.aliases[name]]:
            o.put(new.data if o.buffer else new)

    def drop(self, name: str) -> None:
        """Back to the meta device: the memory is freed once nothing else holds the tensor."""
        import torch

        old = self.param(name)
        meta = torch.nn.Parameter(torch.empty(old.shape, dtype=old.dtype, device="meta"), requires_grad=False)
        for o in self._owners[self.aliases[name]]:
            o.put(meta.data if o.buffer else meta)

    # -- the three passes -------------------------------------------------------------------
    @contextlib.contextmanager
    def _stubs(self, make: Callable[[int], Callable[..., Any]]) -> Iterator[None]:
        for i, layer in enumerate(self.layers):
            layer.forward = make(i)
        try:
            yield
        finally:
            for layer in self.layers:
                del layer.forward  # the class's forward again

    def _call(self, ids: Sequence[int], keep: int | torch.Tensor) -> Any:
        import torch

        return self.model(input_ids=torch.tensor([list(ids)], dtype=torch.long), use_cache=False,
                          logits_to_keep=keep).logits

    def run(self, seqs: Sequence[Sequence[int]], load: LayerFn, unload: LayerFn,
            progress: Callable[[int, int], None] | None = None) -> list[torch.Tensor]:
        """Each sequence's hidden state after the last decoder layer (before the final norm)."""
        import torch

        calls: list[list[tuple[tuple[Any, ...], dict[str, Any]]]] = []
        hidden: list[torch.Tensor] = []
        with torch.inference_mode():
            for ids in seqs:
                rec: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

                def record(i: int, rec: list[tuple[tuple[Any, ...], dict[str, Any]]] = rec) -> Callable[..., Any]:
                    def stub(h: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
                        if i == 0:
                            hidden.append(h)
                        rec.append((args, kwargs))
                        return h
                    return stub

                with self._stubs(record):
                    self._call(ids, 1)
                calls.append(rec)
            for i, layer in enumerate(self.layers):
                load(i)
                try:
                    for s in range(len(seqs)):
                        args, kwargs = calls[s][i]
                        out = layer(hidden[s], *args, **kwargs)
                        if not isinstance(out, torch.Tensor):
                            raise NotImplementedError(f"{type(layer).__name__} returns {type(out).__name__}, "
                                                      f"not the hidden state")
                        hidden[s] = out
                finally:
                    unload(i)
                if progress is not None:
                    progress(i + 1, len(self.layers))
        return hidden

    def replay(self, ids: Sequence[int], final: torch.Tensor, start: int = 0, rows: int = 64) -> Iterator[torch.Tensor]:
        """The model's logits for positions ``start..`` of ``ids``, ``rows`` at a time, from
        ``run``'s hidden state. A few rows at a time: a 262k-vocabulary head with soft-capping
        makes several temporaries of positions x vocabulary each."""
        import torch

        last = len(self.layers) - 1

        def stub(i: int) -> Callable[..., Any]:
            def forward(h: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
                return final if i == last else h
            return forward

        for lo in range(start, len(ids), rows):
            with torch.inference_mode(), self._stubs(stub):
                logits: torch.Tensor = self._call(ids, torch.arange(lo, min(lo + rows, len(ids))))[0]
            yield logits
