"""The command-line convention of every small nanochat command: Hydra-style `key=value` into a typed dataclass.

    python -m nanochat.dataset download n=120 dir=/data/shards
    python -m nanochat.export ckpt=latest:sft out=exported/

`run_command(Schema, argv, fn)` parses the arguments with Hydra's own override grammar (so lists, quoting and
`null` read exactly as they do for train.py), merges them into the structured config of `Schema` (OmegaConf checks
each type), checks ranges from the same fields, and calls `fn(settings)` with a `Schema` instance. `--help`
prints the keys with their types, defaults and docs. A bad value is one line on stderr and exit code 1.
"""
from __future__ import annotations

import sys
from typing import Any, Callable, Sequence

from nanochat.common import NanochatError
from nanochat.config.typed import check_ranges, help_table, one_line


def fail(message: str, code: int = 1):
    """Print one clear error line and exit non-zero."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def parse(schema: type, argv: Sequence[str], positional: str | None = None) -> Any:
    """A `schema` instance from `key=value` arguments (a bare first word fills `positional`), or NanochatError."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    args = list(argv)
    cfg = OmegaConf.structured(schema)
    OmegaConf.set_struct(cfg, True)
    if positional and args and "=" not in args[0] and not args[0].startswith("-"):
        args[0] = f"{positional}={args[0]}"
    for arg in args:
        if "=" not in arg:
            raise NanochatError(f"unexpected argument {arg!r}: give settings as key=value (see --help)")
    try:
        overrides = OverridesParser.create().parse_overrides(args)
    except HydraException as e:
        raise NanochatError(str(e).splitlines()[0]) from None
    for o in overrides:
        key = o.key_or_group
        if o.is_sweep_override():
            raise NanochatError(f"{key}: a list of choices is a sweep; quote a value that holds a comma "
                                f"({key}='a,b') or give a list ({key}=[a,b])")
        try:
            OmegaConf.update(cfg, key, o.value(), merge=True)
        except OmegaConfBaseException as e:
            raise NanochatError(one_line(e)) from None
    try:
        check_ranges(cfg, schema)
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise NanochatError(f"{missing[0]} must be given (see --help)")
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        raise NanochatError(one_line(e)) from None


def usage(schema: type, prog: str, summary: str, positional: str | None = None) -> str:
    lead = f"usage: {prog} " + (f"<{positional}> " if positional else "") + "[key=value ...]"
    return "\n".join([lead, "", summary.strip(), "", "keys (type, default, doc):", *help_table(schema)])


def run_command(schema: type, argv: Sequence[str] | None, fn: Callable[[Any], Any], *, prog: str, summary: str,
                positional: str | None = None) -> int:
    """Parse `argv` into `schema`, run `fn(settings)`; --help prints the keys; errors are one line, exit 1."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv[:1]) or "--help" in argv:
        print(usage(schema, prog, summary, positional))
        return 0
    try:
        settings = parse(schema, argv, positional)
        result = fn(settings)
    except NanochatError as e:
        fail(str(e))
    return int(result) if isinstance(result, int) else 0
