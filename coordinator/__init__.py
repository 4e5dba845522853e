"""edgeshard coordinator: one front for the fleet (routing, jobs, fallback) and its admin CLI."""
