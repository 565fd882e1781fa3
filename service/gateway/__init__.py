"""The HTTP gateway (`unclip gateway`, `uvicorn service.gateway.app:create_app --factory`): checks requests,
queues jobs and serves their state and images. Never imports torch; from `models` only the contract.

  app.py        create_app: middleware, routers, the Redis client
  routes/       one router per resource (jobs, OpenAI-style images, operations), their shared submission,
                and submit_route.py: POST /v1/jobs's well-formed requests without FastAPI's parameter solving
  deps.py       CallContext (the caller's owner id, settings, store, base URL), given by auth.py's one
                dependency, and the Idempotency-Key header
  store.py      JobStore: submit, read, cancel and follow jobs in Redis
  schemas.py    the HTTP bodies; images.py the request-image checks; auth.py, errors.py, body_limit.py
  metrics.py    the gateway's Prometheus metrics; openapi.py writes/checks openapi.yaml
  playground.py `GET /` and `/playground/*`: the static page in static/ (HTML, CSS, JS), open without a key
"""
