"""The `cachefs` subcommands, one module each: `add(sub)` declares its parser, `run(args)` runs it
(registered in cachefs/cli.py)."""
