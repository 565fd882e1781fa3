"""The HTTP routes: one router per resource (jobs, OpenAI-style images, operations)."""
