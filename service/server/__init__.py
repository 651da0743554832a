"""The HTTP server, and the only FastAPI code: app wiring, routes, middleware, problem answers,
API keys, settings, logging and the web page. Imports ``inference``, ``codecs`` and ``core``."""
