"""The status page, its JSON, thumbnails and Prometheus ``/metrics`` (``daemon.http``).

Runs in the supervisor process, in one daemon thread: nothing here imports torch.
"""
