"""The ``stlight`` command (:mod:`service.cli.stlight`) and the flags of its serving
subcommands; each imports its work lazily, so building the parser stays light."""
