"""Media I/O, the only place that decodes and encodes: still images (`images`), video containers
through PyAV with timestamps, rotation, colour tags and audio kept (`container`), and atomic,
no-clobber publishing plus the file helpers everything else uses (`files`)."""
