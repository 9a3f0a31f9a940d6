"""What a registration method is: its specification, and the contracts between a method and ``api``.

Every method module (``rigid/*_method.py``, ``deformable/*_method.py``) declares a :class:`MethodSpec`
named ``SPEC`` and a function ``run(fixed, moving, ctx: RegistrationContext) -> MethodOutput``. The spec
is the one place that says what the method is: its name and label, the kind of transform it gives,
whether it gives the inverse, the model files it takes, its options (type, default, range, help) and
the masks it honours. ``api`` parses and validates options against it once; the CLI help, the Slicer
panel and the demo read it. This module imports neither torch nor Slicer, so the Slicer panel can
read the specs before the dependencies are installed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from .core.errors import InputError

#: The masks a method can honour.
MASKS = ("fixed", "moving")
#: The kinds of transform a method gives.
TRANSFORM_KINDS = ("rigid", "affine", "deformable")


def _boolean(value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{value!r} is not a boolean (true/false)")


def _floats(value) -> tuple:
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    out = tuple(float(v) for v in items)
    if not out:
        raise ValueError("an empty list")
    return out


#: Option types: the Python type a value is converted to. ``floats`` is a comma-separated list.
CONVERTERS = {"int": int, "float": float, "str": str, "bool": _boolean, "floats": _floats}


@dataclass(frozen=True)
class Option:
    """One method option, given as ``--param NAME=VALUE`` or as a keyword of ``api.register``."""

    name: str
    type: str
    default: Any
    help: str
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    choices: Optional[tuple] = None

    def __post_init__(self):
        if self.type not in CONVERTERS:
            raise ValueError(f"option {self.name}: unknown type {self.type!r}")

    def convert(self, value, method: str):
        """``value`` (a string from the command line, or a Python value) as this option's type, checked."""
        if isinstance(value, float) and self.type == "int" and not value.is_integer():
            raise InputError(f"--method {method}: option {self.name} must be an integer, got {value!r}")
        try:
            out = CONVERTERS[self.type](value)
        except (TypeError, ValueError) as err:
            raise InputError(f"--method {method}: bad value for option {self.name} ({err})") from None
        values = out if isinstance(out, tuple) else (out,)
        for v in values:
            if self.choices is not None and v not in self.choices:
                raise InputError(f"--method {method}: option {self.name} must be one of "
                                 f"{', '.join(map(str, self.choices))}, got {v!r}")
            if self.minimum is not None and v < self.minimum or self.maximum is not None and v > self.maximum:
                raise InputError(f"--method {method}: option {self.name} must lie in "
                                 f"[{self.minimum}, {self.maximum}], got {v!r}")
        return out

    def describe(self) -> str:
        """``name=default`` and its help, for ``--help``."""
        bounds = ""
        if self.choices is not None:
            bounds = f"; one of {'/'.join(map(str, self.choices))}"
        elif self.minimum is not None or self.maximum is not None:
            bounds = f"; {self.minimum if self.minimum is not None else ''}..{self.maximum if self.maximum is not None else ''}"
        default = ",".join(map(str, self.default)) if isinstance(self.default, tuple) else self.default
        default = "auto" if default is None else default
        return f"{self.name}={default} ({self.help}{bounds})"


@dataclass(frozen=True)
class MethodSpec:
    """The facts about one registration method (see the module docstring)."""

    name: str
    label: str
    transform: str
    module: str
    inverse: bool = False
    model_kind: Optional[str] = None
    default_model: Optional[str] = None
    #: the most model files one call takes (several: applied in the order given)
    max_models: int = 1
    options: tuple = ()
    masks: frozenset = frozenset()

    def __post_init__(self):
        if self.transform not in TRANSFORM_KINDS:
            raise ValueError(f"method {self.name}: unknown transform kind {self.transform!r}")
        if not set(self.masks) <= set(MASKS):
            raise ValueError(f"method {self.name}: unknown masks {set(self.masks) - set(MASKS)}")

    @property
    def deformable(self) -> bool:
        return self.transform == "deformable"

    def option(self, name: str) -> Option:
        return {o.name: o for o in self.options}[name]

    def parse_options(self, raw: dict) -> dict:
        """Every option of the method, typed and checked: ``raw`` values where given, defaults elsewhere.

        Keys may use ``-`` or ``_``. An unknown key is refused with the method's known keys.
        """
        given = {str(k).strip().replace("-", "_"): v for k, v in (raw or {}).items()}
        known = {o.name: o for o in self.options}
        unknown = sorted(set(given) - set(known))
        if unknown:
            hint = f"known: {', '.join(known)}" if known else "the method takes no options"
            raise InputError(f"unknown option(s) for --method {self.name}: {', '.join(unknown)} ({hint})")
        return {name: o.convert(given[name], self.name) if name in given else o.default for name, o in known.items()}

    def parse_models(self, models) -> list:
        """The model names or files to use: those given, else the bundled default (``[]`` without models)."""
        models = [models] if isinstance(models, str) else list(models or [])
        if models and self.model_kind is None:
            raise InputError(f"--method {self.name} takes no --model")
        if len(models) > self.max_models:
            raise InputError(f"--method {self.name} takes {'one --model' if self.max_models == 1 else f'at most {self.max_models} models'}, "
                             f"got {len(models)}")
        return models

    def check_masks(self, fixed_mask, moving_mask) -> None:
        """Refuse a mask the method cannot use (it would otherwise be ignored)."""
        for name, mask in (("fixed", fixed_mask), ("moving", moving_mask)):
            if mask is not None and name not in self.masks:
                honoured = " and ".join(sorted(self.masks)) or "no"
                raise InputError(f"--method {self.name} cannot use a {name} mask (it honours {honoured} masks); "
                                 f"leave --{name}-mask out or choose another method")

    def help_line(self) -> str:
        """One paragraph for ``--help``: label, options, masks."""
        options = "; ".join(o.describe() for o in self.options) or "no options"
        masks = " and ".join(sorted(self.masks)) + " masks" if self.masks else "no masks"
        return f"{self.name}: {self.label}. Options: {options}. Honours {masks}."


@dataclass
class RegistrationContext:
    """What a method gets besides the two images: options already parsed by its spec."""

    device: Any
    progress: Any
    initial_transform: Any
    options: dict = field(default_factory=dict)
    models: list = field(default_factory=list)
    fixed_mask: Any = None
    moving_mask: Any = None


@dataclass
class MethodOutput:
    """What a method returns: the fixed->moving transform, optionally its inverse, and report entries."""

    transform: Any
    inverse: Any = None
    report: dict = field(default_factory=dict)
