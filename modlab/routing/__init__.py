"""Routing: routers, top-k selection, and the routed-block wrapper (MoD / UniMoD)."""
