"""Media I/O, the only place that decodes and encodes: still images (`images`), video
containers through PyAV with timestamps, rotation, colour tags and audio kept (`container`,
the public video API over `source`, `packets`, `probe`, `decode` and `encode`), and atomic,
no-clobber publishing plus the file helpers everything else uses (`files`)."""
