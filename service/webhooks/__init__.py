"""Webhooks (issue 17): Standard Webhooks signatures, the SSRF guard, the Redis outbox and its dispatcher.

Torch-free; used by the gateway only. See each module's docstring; outbox.py has the Redis layout."""
