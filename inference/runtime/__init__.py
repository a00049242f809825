"""Running models: plain torch, no Django. Loaded inside the sandboxed model host."""
