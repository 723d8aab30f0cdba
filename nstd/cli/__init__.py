"""The command line: the `nstd` parser, the one-shot sub-commands and the mapping of errors to
exit codes (`main`), the daemon's sub-commands `run`, `status` and `retry` (`daemon`), and what
they share: config from the arguments, logging set-up and the stop flag (`common`)."""
