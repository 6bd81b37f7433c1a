"""Mixed precision per weight node, after QuantMCU: measured sensitivity, a value-driven proxy,
measured cost, a budgeted search, and precision variants of a package's segments. Export side only."""
