"""One module per ``lbctl`` subcommand: ``add_arguments(parser)`` and ``run(args, ctx)``."""
