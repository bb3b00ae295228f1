"""The ``edgekit`` command: a thin shell over the library.

Commands live one per module in :mod:`edgekit.commands` and are imported only when run,
so ``edgekit --help`` starts without touching torch, llama_cpp or onnxruntime. This is the
one place where library errors become CLI errors: one line on stderr, exit code 1.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from . import __version__
from .errors import EdgekitError

# command name -> (module in edgekit.commands, attribute, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "convert": ("convert", "convert", "Convert a Hugging Face model to GGUF, ONNX and/or GPTQ, verified."),
    "inspect": ("inspect", "inspect", "Show a GGUF file's metadata and tensors, or an output manifest."),
    "run": ("run", "run", "Generate text from an artifact (streams tokens)."),
    "chat": ("run", "chat", "Chat with an artifact using its chat template."),
    "profile": ("profile", "profile", "Hardware profiles: list, show, detect this host, calibrate."),
    "recommend": ("recommend", "recommend", "Rank formats/quants for a device profile and pick one."),
    "serve": ("serve", "serve", "Serve an artifact over a local OpenAI-compatible HTTP API."),
    "eval": ("eval", "eval_cmd", "Perplexity and KL divergence of an artifact against a reference."),
    "bench": ("bench", "bench", "Benchmark artifacts with the conditions recorded; `bench report` plots results."),
    "support": ("support", "support", "Which model architectures convert to GGUF, ONNX and GPTQ."),
    "export": ("export", "export", "Hand a GGUF to Ollama (Modelfile) or LM Studio (its models directory)."),
    "fleet": ("fleet", "fleet", "Run bench/convert matrices across boards joined into a Ray cluster."),
    "doctor": ("doctor", "doctor", "What this host can run (llama.cpp build, GPU, ONNX Runtime) and the fix for each mismatch."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[cmd_name]
        cmd = getattr(importlib.import_module(f"edgekit.commands.{module}"), attr)
        assert isinstance(cmd, click.Command)
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help text from the table, so --help imports no command module.
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_) for name, (_, _, help_) in COMMANDS.items()])

    def invoke(self, ctx: click.Context) -> Any:
        from .logs import third_party_to_log

        try:
            with third_party_to_log():  # transformers' warnings and bars: to the log (-v), not the terminal
                return super().invoke(ctx)
        except EdgekitError as e:
            click.echo(f"error: {e.one_line()}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgekit")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """edgekit: put fine-tuned LLMs on edge hardware."""
    from .logs import setup_cli_logging

    setup_cli_logging(verbose)
