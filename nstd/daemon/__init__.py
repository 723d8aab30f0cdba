"""The watched-folder service: the main loop that claims and runs jobs (`supervisor`), the SQLite
ledger with leases and attempts (`ledger`), inbox events and the stability check (`watch`), what
a file in the inbox asks for (`intake`), publishing and moving sources to done/failed
(`outcome`), systemd notification (`notify`) and the cache of loaded networks (`engines`)."""
