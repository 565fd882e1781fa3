"""The HTTP gateway (`unclip gateway`, `uvicorn service.gateway.app:create_app --factory`): checks requests,
queues jobs and serves their state and images. Never imports torch; from `models` only the contract.

  app.py        create_app: middleware, routers, the Redis client
  routes/       one router per resource (jobs, OpenAI-style images, operations) and their shared submission
  store.py      JobStore: submit, read, cancel and follow jobs in Redis
  schemas.py    the HTTP bodies; images.py the request-image checks; auth.py, errors.py, body_limit.py
  metrics.py    the gateway's Prometheus metrics; openapi.py writes/checks openapi.yaml
  playground.py `GET /` and `/playground/*`: the static page in static/ (HTML, CSS, JS), open without a key
"""
