"""The ``loracli`` command line: one module per subcommand, assembled by ``loracli.cli.app.make_app``."""
