"""What the gateway and the workers share about jobs in Redis (Contract C, DESIGN §4).

  states.py  the statuses and the one table of allowed status transitions
  layout.py  the Redis keys and the stream's consumer group
  lua.py     every transition as one atomic Lua script (submit, cancel, start, progress, finish, ...)
  codec.py   images in job params (base64 PNG/JPEG) and results (PNG), PIL only
"""
