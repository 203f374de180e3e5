"""Ways a human decides on a held call, one module each: `api` (HTTP, used by the CLI too)."""
