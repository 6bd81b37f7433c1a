"""One-off measurements: each module is headed by the question it answers and the figure it produced."""
