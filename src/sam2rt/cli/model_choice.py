"""The model a command runs: --checkpoint, --variant, --image-size, --device, --fast/--exact, --compile and
--cpu-bf16.

Each option is written once, as a field of `ModelChoice` holding its typer option; `@model_options` puts
the options into every command that runs the model and hands the command one `ModelChoice`.
"""

from __future__ import annotations

import functools
import inspect
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import typer

from .. import checkpoints
from .common import RunFailed, check_variant

if TYPE_CHECKING:
    import torch
    from torch import nn

DEFAULT_VARIANT = "sam2.1_hiera_tiny"


def _option(default: Any, *declarations: str, help: str) -> Any:
    """A field of ModelChoice with its default, given on the command line by `typer.Option(default, *declarations,
    help=help)` (kept in the field's metadata for `@model_options`)."""
    return field(default=default, metadata={"option": typer.Option(default, *declarations, help=help)})


@dataclass(frozen=True)
class ModelChoice:
    """The model options as a command was given them (the defaults are the command line's); `load()` makes the model."""

    checkpoint: Optional[Path] = _option(
        None, "--checkpoint", "-c", help="Checkpoint file (.pt or .safetensors); its variant is read from it."
    )
    variant: Optional[str] = _option(
        None,
        "--variant",
        help="Model variant; without --checkpoint, from the cache, downloaded when missing "
        f"(default: {DEFAULT_VARIANT}).",
    )
    image_size: int = _option(
        1024, "--image-size", help="Model input side in pixels, a multiple of 32 (the checkpoints are trained at 1024)."
    )
    device: Optional[str] = _option(None, "--device", help="cpu, cuda, cuda:1, mps (default: cuda when available).")
    fast: bool = _option(
        True, "--fast/--exact", help="On CUDA: bf16 weights and CUDA graphs (--exact: fp32 weights, no graphs)."
    )
    compile: bool = _option(
        False,
        "--compile",
        help="CUDA only: also torch.compile the model (under --fast's graphs); compiling adds time at start-up.",
    )
    cpu_bf16: bool = _option(
        False,
        "--cpu-bf16",
        help="On the CPU: bf16 weights (SAM 2, EdgeTAM), about twice the FPS on CPUs with AMX or AVX512-BF16 "
        "(slower on others); masks differ slightly from fp32, as under --fast on CUDA.",
    )

    def check(self) -> None:
        """Usage errors (exit code 2), found before any work: an unknown variant, a bad image size."""
        check_variant(self.variant, "--variant")
        if self.image_size <= 0 or self.image_size % 32:
            raise typer.BadParameter(
                f"must be a positive multiple of 32, got {self.image_size}", param_hint="--image-size"
            )
        if self.cpu_bf16 and not self.fast:
            raise typer.BadParameter("--exact keeps fp32 weights; leave one of the two out", param_hint="--cpu-bf16")

    def target_device(self) -> torch.device:
        """The torch.device to run on; RunFailed when it is unknown or absent here, or --compile is off CUDA."""
        device = parse_device(self.device)
        if self.compile and device.type != "cuda":
            # Refused rather than ignored: compiling is set up and measured for CUDA; on CPU inductor needs a C++
            # compiler and tens of seconds per module, for a speed nobody measured.
            raise RunFailed(f"--compile needs a CUDA device, and the model would run on {device}")
        return device

    def variant_name(self) -> str:
        """--variant, else the variant the checkpoint holds (read from the file), else the default."""
        if self.variant is not None:
            return self.variant
        if self.checkpoint is not None:
            return checkpoints.checkpoint_variant(self.checkpoint)
        return DEFAULT_VARIANT

    def load(self) -> nn.Module:
        """The model with its weights on the device, with --fast/--exact, --compile and --cpu-bf16 applied."""
        from ..runtime import cpu_has_native_bf16, with_speed_options

        self.check()
        device = self.target_device()
        model = checkpoints.load_model(self.variant_name(), self.checkpoint, device, self.image_size)
        if self.cpu_bf16 and device.type == "cpu" and not cpu_has_native_bf16():
            # Not refused: the flag still does what it says, and a user may measure it; but say what to expect.
            typer.echo(
                "note: this CPU reports no bf16 instructions (AMX, AVX512-BF16): --cpu-bf16 may run slower", err=True
            )
        return with_speed_options(model, self.fast, self.compile, self.cpu_bf16)


def parse_device(name: Optional[str]) -> torch.device:
    """--device as a torch.device (None: CUDA when available); RunFailed when it is unknown or absent here."""
    import torch

    if name is None:
        return checkpoints.default_device()
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise RunFailed(f"unknown device {name!r} (expected cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunFailed(f"device {name} was asked for, but CUDA is not available here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RunFailed(f"device {name} was asked for, but MPS is not available here")
    return device


class _ModelOptionsHere:
    """What `model: ModelChoice = MODEL_OPTIONS` defaults to: Python wants a default there."""

    def __repr__(self) -> str:
        return "MODEL_OPTIONS"


# The default of a command's `model: ModelChoice` parameter, which `@model_options` replaces by the options.
MODEL_OPTIONS: Any = _ModelOptionsHere()

_WITHOUT_SPEED = {"fast": False, "compile": False, "cpu_bf16": False}  # speed=False: fp32, no graphs or compiling

Command = Callable[..., None]


def model_options(
    command: Optional[Command] = None, *, speed: bool = True
) -> Union[Command, Callable[[Command], Command]]:
    """Give a command the model options: its `model: ModelChoice` parameter becomes the options on the command line.

    typer makes a command's options from the parameters of its function, so without this every command
    that runs the model would list the seven options again and hand them on one by one. A command writes

        @app.command()
        @model_options
        def track(source: str = typer.Argument(...), model: ModelChoice = MODEL_OPTIONS, ...) -> None:

    and typer sees --checkpoint, --variant, --image-size, --device, --fast/--exact, --compile and --cpu-bf16
    where `model` stands (the order of `--help`); the function is called with one ModelChoice. With
    `@model_options(speed=False)` (train, export) the command has no --fast/--exact, --compile or --cpu-bf16: its
    model keeps fp32 weights, without graphs or compiling.

    typer reads a function with inspect.signature and typing.get_type_hints; the wrapper's `__signature__`
    and `__annotations__` hold the options with their types resolved, since the commands' annotations are
    strings (`from __future__ import annotations`) that would not resolve in another module.
    """
    if command is None:
        return lambda undecorated: _with_model_options(undecorated, speed)
    return _with_model_options(command, speed)


def _with_model_options(command: Command, speed: bool) -> Command:
    hints = typing.get_type_hints(command)  # the annotations as types, not the strings of the module
    slots = [name for name, hint in hints.items() if hint is ModelChoice]
    if len(slots) != 1:
        raise TypeError(f"@model_options: {command.__name__} needs one parameter of type ModelChoice, not {len(slots)}")
    slot = slots[0]
    option_types = typing.get_type_hints(ModelChoice)
    options = [choice for choice in fields(ModelChoice) if speed or choice.name not in _WITHOUT_SPEED]
    signature = inspect.signature(command)
    taken = [choice.name for choice in options if choice.name in signature.parameters]
    if taken:
        raise TypeError(f"@model_options: {command.__name__} has parameters named like model options: {taken}")
    parameters = []
    for parameter in signature.parameters.values():
        if parameter.name != slot:
            parameters.append(parameter.replace(annotation=hints.get(parameter.name, parameter.empty)))
            continue
        for choice in options:  # where the ModelChoice parameter stood: the options keep their place in --help
            option, annotation = choice.metadata["option"], option_types[choice.name]
            parameters.append(inspect.Parameter(choice.name, parameter.kind, default=option, annotation=annotation))

    @functools.wraps(command)
    def with_model(**arguments: Any) -> None:  # typer passes every parameter by name
        given = {choice.name: arguments.pop(choice.name) for choice in options}
        arguments[slot] = ModelChoice(**given, **({} if speed else _WITHOUT_SPEED))
        return command(**arguments)

    returns = hints.get("return", signature.empty)
    with_model.__signature__ = signature.replace(parameters=parameters, return_annotation=returns)  # type: ignore[attr-defined]
    with_model.__annotations__ = {p.name: p.annotation for p in parameters if p.annotation is not p.empty}
    if returns is not signature.empty:
        with_model.__annotations__["return"] = returns
    return with_model
