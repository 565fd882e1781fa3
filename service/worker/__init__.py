"""The worker (`unclip worker`): the only place where the service meets the torch models.

  process.py   load the checkpoint, wire the loop to Redis and the probe server
  loop.py      claim → batch → run → finish, retries and give-ups
  batching.py  which claimed jobs run together (pure)
  executor.py  job params → pipeline calls, chunked to max_batch_size
  queue.py     the worker's Redis calls (claims, leases, START / PROGRESS / FINISH)
  leases.py    the lease thread; progress.py the progress callback; metrics.py; probe.py (/metrics, /healthz)
"""
