"""Scale-out on Ray (``cluster.backend: ray``): one actor per GPU, a video cut into units.

    schedule.py the order a job's units are queued in (packed onto the actors)
    wire.py     what crosses the network, as plain data: units, frames, encoded images
    actor.py    the Ray actor (network loaded once; runs units; the only torch here)
    pool.py     the supervisor's side: actors, a queue of units, re-runs after a death
    driver.py   one job on the pool: plan, store what comes back, seams, encode, publish
    status.py   the actors in `nstd status`
    backend.py  `spawn()` for the supervisor, in place of worker processes

Nothing here but actor.py imports torch, and actor.py only inside the actor process.
"""
