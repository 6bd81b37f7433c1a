"""Target devices: what a measurement was taken on, so it is never used on another silently."""
